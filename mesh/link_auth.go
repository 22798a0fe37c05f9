package mesh

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net"

	"github.com/imgn/imgn/mesh/meshpb"
)

// Link authentication (docs/cluster.md, "Link authentication"). When
// LinkConfig.Secret is set, a link is used only after both ends proved they
// know it, by a challenge of fresh nonces:
//
//	dialer   -> HELLO {nonce: nD}
//	acceptor -> HELLO {nonce: nA, mac: HMAC(secret, "acceptor", nD, nA, dialer id, acceptor id)}
//	dialer   -> AUTH  {mac: HMAC(secret, "dialer", nD, nA, dialer id, acceptor id)}
//
// The acceptor serves nothing before a valid AUTH; the dialer sends nothing
// but AUTH before it checked the acceptor's mac. Fresh nonces on both sides
// make a recorded exchange useless on another link, and the role label
// keeps one side's proof from being reflected as the other's. A peer
// without the secret (or with another) is refused and counted
// (Links.AuthFailures). Both ends must have the secret or neither.

// nonceSize is the length of a HELLO nonce.
const nonceSize = 32

// Roles in the MAC, so that neither proof can stand in for the other.
const (
	roleAcceptor = "imgn mesh v1 acceptor"
	roleDialer   = "imgn mesh v1 dialer"
)

func newNonce() ([]byte, error) {
	b := make([]byte, nonceSize)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("mesh: nonce: %w", err)
	}
	return b, nil
}

// linkMAC is the proof of role over one link's handshake: every input is
// length-prefixed, so no two different handshakes hash the same bytes.
func linkMAC(secret []byte, role string, dialerNonce, acceptorNonce []byte, dialerID, acceptorID string) []byte {
	m := hmac.New(sha256.New, secret)
	for _, part := range [][]byte{[]byte(role), dialerNonce, acceptorNonce, []byte(dialerID), []byte(acceptorID)} {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(part)))
		m.Write(n[:])
		m.Write(part)
	}
	return m.Sum(nil)
}

// authFailed counts a peer refused for not proving the secret and returns
// err.
func (l *Links) authFailed(remote net.Addr, err error) error {
	l.authFailures.Add(1)
	if l.cfg.AuthFailures != nil {
		l.cfg.AuthFailures.Inc()
	}
	l.log.Warn("mesh: peer refused: not authenticated", "remote", remote.String(), "err", err)
	return err
}

// AuthFailures returns how many links this node refused, as dialer or
// acceptor, because the peer did not prove it knows the mesh secret.
func (l *Links) AuthFailures() uint64 { return l.authFailures.Load() }

// acceptorHello is the acceptor's HELLO answering hello, with its nonce and
// proof when the node has a secret; nonce is what the dialer's AUTH must
// be checked against. A dialer without a nonce, when this node has a
// secret, is refused (errAuth).
func (l *Links) acceptorHello(hello *meshpb.Hello) (reply *meshpb.Hello, nonce []byte, err error) {
	reply = &meshpb.Hello{Version: meshpb.Version, NodeId: l.self.ID, BootEpoch: l.self.BootEpoch}
	if len(l.cfg.Secret) == 0 {
		return reply, nil, nil
	}
	if len(hello.Nonce) != nonceSize {
		return nil, nil, fmt.Errorf("%w: the peer sent no challenge (no mesh secret configured on it?)", errAuth)
	}
	if nonce, err = newNonce(); err != nil {
		return nil, nil, err
	}
	reply.Nonce = nonce
	reply.Mac = linkMAC(l.cfg.Secret, roleAcceptor, hello.Nonce, nonce, hello.NodeId, l.self.ID)
	return reply, nonce, nil
}

// checkAuth checks the dialer's AUTH mac.
func (l *Links) checkAuth(hello *meshpb.Hello, nonce []byte, auth *meshpb.Auth) error {
	want := linkMAC(l.cfg.Secret, roleDialer, hello.Nonce, nonce, hello.NodeId, l.self.ID)
	if !hmac.Equal(auth.Mac, want) {
		return fmt.Errorf("%w: wrong AUTH proof (another mesh secret?)", errAuth)
	}
	return nil
}

// dialerProof checks the acceptor's HELLO against the dialer's nonce and
// returns the AUTH to send, or nil when the node has no secret.
func (p *peer) dialerProof(nonce []byte, hello *meshpb.Hello) (*meshpb.Auth, error) {
	l := p.l
	if len(l.cfg.Secret) == 0 {
		if len(hello.Nonce) != 0 {
			return nil, fmt.Errorf("%w: %s requires a mesh secret and this node has none", errAuth, p.id)
		}
		return nil, nil
	}
	if len(hello.Nonce) != nonceSize {
		return nil, fmt.Errorf("%w: %s did not answer the challenge (no mesh secret configured on it?)", errAuth, p.id)
	}
	want := linkMAC(l.cfg.Secret, roleAcceptor, nonce, hello.Nonce, l.self.ID, p.id)
	if !hmac.Equal(hello.Mac, want) {
		return nil, fmt.Errorf("%w: %s gave a wrong proof (another mesh secret?)", errAuth, p.id)
	}
	return &meshpb.Auth{Mac: linkMAC(l.cfg.Secret, roleDialer, nonce, hello.Nonce, l.self.ID, p.id)}, nil
}

// answerHello sends the acceptor's HELLO for the dialer's hello (request
// seq) and, when the node has a secret, reads and checks the dialer's AUTH.
// A peer that fails is answered ERROR AUTH, counted, and false is
// returned: the caller closes the link. The handshake deadline set by
// acceptHello bounds the wait for AUTH.
func (l *Links) answerHello(conn net.Conn, fr *frameReader, hello *meshpb.Hello, seq uint32) bool {
	refuse := func(err error) bool {
		_ = writeFrameNow(conn, meshpb.CmdError, seq, &meshpb.Error{Code: meshpb.ErrorCode_ERROR_CODE_AUTH, Message: err.Error()})
		l.authFailed(conn.RemoteAddr(), err)
		return false
	}
	reply, nonce, err := l.acceptorHello(hello)
	if err != nil {
		return refuse(err)
	}
	if err := writeFrameNow(conn, meshpb.CmdHello, seq, reply); err != nil {
		return false
	}
	if nonce == nil {
		return true
	}
	h, body, err := fr.next()
	if err != nil {
		return refuse(fmt.Errorf("%w: no AUTH: %w", errAuth, err))
	}
	var auth meshpb.Auth
	if h.Command != meshpb.CmdAuth || unmarshal(body, &auth) != nil {
		return refuse(fmt.Errorf("%w: expected AUTH, got %s", errAuth, h.Command))
	}
	if err := l.checkAuth(hello, nonce, &auth); err != nil {
		return refuse(err)
	}
	return true
}
