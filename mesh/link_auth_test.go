package mesh_test

import (
	"context"
	"crypto/rand"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/mesh"
	"github.com/imgn/imgn/mesh/membership"
	"github.com/imgn/imgn/mesh/meshpb"
	"github.com/imgn/imgn/mesh/transporttest"
	"github.com/imgn/imgn/persist"
	"google.golang.org/protobuf/proto"
)

// securedSuite makes links with the mesh secret secret.
func securedSuite(secret string, failures *atomic.Int64) transporttest.Suite {
	return transporttest.Suite{New: func(t testing.TB, p transporttest.Params) mesh.Transport {
		cfg := fastLinks(p)
		cfg.Secret = []byte(secret)
		if failures != nil {
			cfg.AuthFailures = counter{failures}
		}
		l, err := mesh.NewLinks(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}}
}

type counter struct{ n *atomic.Int64 }

func (c counter) Inc() { c.n.Add(1) }

// TestLinksConformanceWithSecret runs the whole transport suite over
// authenticated links.
func TestLinksConformanceWithSecret(t *testing.T) {
	transporttest.Run(t, securedSuite("0123456789abcdef-mesh", nil))
}

// TestLinksRefuseUnauthenticatedPeers: nodes whose secrets differ, or of
// which one has none, never link; both sides count the refusals.
func TestLinksRefuseUnauthenticatedPeers(t *testing.T) {
	p := transporttest.DefaultParams
	for _, tc := range []struct{ name, a, b string }{
		{"different secrets", "secret-of-node-a-0001", "secret-of-node-b-0002"},
		{"dialer without secret", "", "secret-of-node-b-0002"},
		{"acceptor without secret", "secret-of-node-a-0001", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fa, fb atomic.Int64
			suite := func(secret string, f *atomic.Int64) transporttest.Suite {
				if secret == "" {
					return linkSuite
				}
				return securedSuite(secret, f)
			}
			a := transporttest.StartNode(t, suite(tc.a, &fa), p, "node-a", "", nil)
			b := transporttest.StartNode(t, suite(tc.b, &fb), p, "node-b", "", nil)
			a.T.SetPeers([]membership.NodeInfo{a.Info, b.Info}) // only a dials
			testutil.Eventually(t, transporttest.Patience, "link outcome", func() error {
				if a.T.(*mesh.Links).AuthFailures() == 0 && b.T.(*mesh.Links).AuthFailures() == 0 {
					return errors.New("no refusal counted yet")
				}
				return nil
			})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if _, err := a.T.Append(ctx, "node-b", persist.Message{ID: 1}, []string{"u"}); !errors.Is(err, cluster.ErrForward) {
				t.Fatalf("append over a refused link: %v", err)
			}
			if len(b.H.Appends()) != 0 {
				t.Fatal("the acceptor served an unauthenticated peer")
			}
			// The counters of the config follow Links.AuthFailures.
			if tc.a != "" && fa.Load() != int64(a.T.(*mesh.Links).AuthFailures()) {
				t.Fatalf("config counter %d, Links %d", fa.Load(), a.T.(*mesh.Links).AuthFailures())
			}
		})
	}
}

// TestLinksAuthByHand drives an acceptor with a secret the way an intruder
// would: no challenge, a made-up proof, or a request instead of AUTH; each
// is refused with ERROR AUTH before anything is served, and counted.
func TestLinksAuthByHand(t *testing.T) {
	b := transporttest.StartNode(t, securedSuite("0123456789abcdef-mesh", nil), transporttest.DefaultParams, "node-b", "", nil)
	nonce := make([]byte, 32)
	_, _ = rand.Read(nonce)
	withNonce := hello("node-b")
	withNonce.Nonce = nonce
	appendReq := frame(t, meshpb.CmdAppend, 2, &meshpb.AppendRequest{Msg: &meshpb.Message{Id: 5}, Inboxes: []string{"x"}})
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"no challenge", append(frame(t, meshpb.CmdHello, 1, hello("node-b")), appendReq...)},
		{"short challenge", frame(t, meshpb.CmdHello, 1, &meshpb.Hello{Version: 1, NodeId: "intruder", PeerId: "node-b", Nonce: []byte{1, 2, 3}})},
		{"wrong proof", append(frame(t, meshpb.CmdHello, 1, withNonce), frame(t, meshpb.CmdAuth, 1, &meshpb.Auth{Mac: make([]byte, 32)})...)},
		{"request instead of AUTH", append(frame(t, meshpb.CmdHello, 1, withNonce), appendReq...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := b.T.(*mesh.Links).AuthFailures()
			c := rawConn(t, b)
			if _, err := c.Write(tc.in); err != nil {
				t.Fatal(err)
			}
			frames := expectClosed(t, c)
			if len(frames) == 0 {
				t.Fatal("closed without an ERROR")
			}
			last := frames[len(frames)-1]
			var e meshpb.Error
			if last.Command != meshpb.CmdError || proto.Unmarshal(last.Body, &e) != nil || e.Code != meshpb.ErrorCode_ERROR_CODE_AUTH {
				t.Fatalf("last frame %v %q, want ERROR AUTH", last.Command, last.Body)
			}
			for _, f := range frames {
				if f.Command == meshpb.CmdHello {
					var h meshpb.Hello
					if proto.Unmarshal(f.Body, &h) != nil || len(h.Nonce) != 32 || len(h.Mac) != 32 {
						t.Fatalf("acceptor HELLO without its challenge and proof: %v", &h)
					}
				}
			}
			if got := b.T.(*mesh.Links).AuthFailures(); got != before+1 {
				t.Fatalf("refusals counted %d, want %d", got, before+1)
			}
			if n := len(b.H.Appends()); n != 0 {
				t.Fatalf("%d appends served to an intruder", n)
			}
		})
	}
}
