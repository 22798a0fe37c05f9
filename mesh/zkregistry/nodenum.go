package zkregistry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-zookeeper/zk"
)

// MaxNodeNum is the largest node number: message ids hold 10 bits of it,
// and 0 is never used.
const MaxNodeNum = 1023

// ErrNodeNumTaken: the node number asked for is held by another node id.
var ErrNodeNumTaken = errors.New("zkregistry: node number held by another node")

// ErrNoNodeNum: all MaxNodeNum numbers are held.
var ErrNoNodeNum = errors.New("zkregistry: every node number is held")

// NodeNumRoot is the znode under which node numbers are claimed for a
// registry rooted at root: a sibling of root, so that the member list
// never sees the claims.
func NodeNumRoot(root string) string { return root + "-nums" }

// ClaimNodeNum claims, for node id, a node number in 1..MaxNodeNum (the
// number engine message ids carry, which must differ between the nodes of
// a cluster), and returns it.
//
// Claims are persistent znodes <NodeNumRoot(Root)>/<number> holding the
// node id, created atomically: two nodes never hold one number, and a node
// id keeps its number across restarts. With want > 0 exactly that number
// is claimed; ErrNodeNumTaken when another node id holds it. With want 0
// the number id already holds is returned, else the first free one from
// preferred on (wrapping around; preferred 0 means 1); ErrNoNodeNum when
// none is free. Other claims of id are released once the new one is
// made, so changing a node's number does not leak the old one.
//
// A claim outlives its node: a node id taken out of service keeps its
// number until an operator deletes the znode. ClaimNodeNum retries while
// ZooKeeper is unreachable, until ctx ends. It uses the registration
// session, so a watcher (NewWatcher) cannot claim.
func (r *Registry) ClaimNodeNum(ctx context.Context, id string, want, preferred uint16) (uint16, error) {
	if r.readOnly {
		return 0, fmt.Errorf("zkregistry: claim node number: read-only registry")
	}
	if want > MaxNodeNum || preferred > MaxNodeNum {
		return 0, fmt.Errorf("zkregistry: node number must be in 1..%d", MaxNodeNum)
	}
	if id == "" {
		return 0, errors.New("zkregistry: claim node number: empty node id")
	}
	for {
		n, err := r.claimOnce(id, want, preferred)
		if err == nil || !transient(err) {
			return n, err
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("zkregistry: claim node number of %s: %w (last error: %w)", id, ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// transient reports whether a ZooKeeper error may go away by retrying.
func transient(err error) bool {
	return errors.Is(err, zk.ErrNoServer) || errors.Is(err, zk.ErrConnectionClosed) ||
		errors.Is(err, zk.ErrSessionExpired) || errors.Is(err, zk.ErrSessionMoved) || errors.Is(err, zk.ErrClosing)
}

func (r *Registry) claimOnce(id string, want, preferred uint16) (uint16, error) {
	c := r.sess.c
	numRoot := NodeNumRoot(r.root)
	if err := ensurePath(c, numRoot); err != nil {
		return 0, err
	}
	held, err := claimsOf(c, numRoot)
	if err != nil {
		return 0, err
	}
	var mine []uint16
	for n, holder := range held {
		if holder == id {
			mine = append(mine, n)
		}
	}
	slices.Sort(mine)
	var got uint16
	switch {
	case want > 0:
		if holder, ok := held[want]; ok && holder != id {
			return 0, fmt.Errorf("%w: %d is held by %q (delete %s/%d if that node is gone for good)", ErrNodeNumTaken, want, holder, numRoot, want)
		}
		if err := claim(c, numRoot, want, id); err != nil {
			return 0, err
		}
		got = want
	case len(mine) > 0:
		got = mine[0]
	default:
		start := max(preferred, 1)
		for k := range uint16(MaxNodeNum) {
			n := (start-1+k)%MaxNodeNum + 1
			if _, ok := held[n]; ok {
				continue
			}
			err := claim(c, numRoot, n, id)
			if errors.Is(err, ErrNodeNumTaken) {
				continue // claimed by someone else meanwhile
			}
			if err != nil {
				return 0, err
			}
			got = n
			break
		}
		if got == 0 {
			return 0, ErrNoNodeNum
		}
	}
	for _, n := range mine {
		if n != got {
			release(c, numRoot, n, id)
		}
	}
	return got, nil
}

// claimsOf reads every claim under numRoot: number -> node id.
func claimsOf(c *zk.Conn, numRoot string) (map[uint16]string, error) {
	children, _, err := c.Children(numRoot)
	if err != nil {
		return nil, fmt.Errorf("zkregistry: list %s: %w", numRoot, err)
	}
	held := make(map[uint16]string, len(children))
	for _, name := range children {
		n, err := strconv.ParseUint(name, 10, 16)
		if err != nil || n == 0 || n > MaxNodeNum {
			continue // not a claim
		}
		data, _, err := c.Get(numRoot + "/" + name)
		if errors.Is(err, zk.ErrNoNode) {
			continue // released meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("zkregistry: read %s/%s: %w", numRoot, name, err)
		}
		held[uint16(n)] = string(data)
	}
	return held, nil
}

// claim creates the claim of n for id; an existing claim of id is fine,
// one of another id is ErrNodeNumTaken.
func claim(c *zk.Conn, numRoot string, n uint16, id string) error {
	p := numRoot + "/" + strconv.Itoa(int(n))
	_, err := c.Create(p, []byte(id), 0, zk.WorldACL(zk.PermAll))
	if err == nil {
		return nil
	}
	if !errors.Is(err, zk.ErrNodeExists) {
		return fmt.Errorf("zkregistry: create %s: %w", p, err)
	}
	data, _, err := c.Get(p)
	if err != nil {
		return fmt.Errorf("zkregistry: read %s: %w", p, err)
	}
	if string(data) != id {
		return fmt.Errorf("%w: %d is held by %q", ErrNodeNumTaken, n, data)
	}
	return nil
}

// release deletes id's claim of n if it is still id's (best effort: a
// leftover claim only keeps a number in use).
func release(c *zk.Conn, numRoot string, n uint16, id string) {
	p := numRoot + "/" + strconv.Itoa(int(n))
	data, st, err := c.Get(p)
	if err != nil || string(data) != id {
		return
	}
	_ = c.Delete(p, st.Version)
}

// ensurePath creates p and its parents (persistent, empty) when missing.
func ensurePath(c *zk.Conn, p string) error {
	cur := ""
	for _, part := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		cur += "/" + part
		if _, err := c.Create(cur, nil, 0, zk.WorldACL(zk.PermAll)); err != nil && !errors.Is(err, zk.ErrNodeExists) {
			return fmt.Errorf("zkregistry: create %s: %w", cur, err)
		}
	}
	return nil
}
