package zkregistry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/imgn/imgn/internal/testsvc"
)

// TestNodeNums claims node numbers on a real ZooKeeper: concurrent claims
// with the same preferred number all differ, a node id keeps its number
// across restarts, a number held by another node is refused, and moving a
// node to another number frees the old one.
func TestNodeNums(t *testing.T) {
	t.Parallel()
	svc := testsvc.StartZooKeeper(t)
	cfg := Config{Servers: []string{svc.Addr}, Root: newRoot("nodenums"), SessionTimeout: sessionTimeout}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	claim := func(id string, want, preferred uint16) (uint16, error) {
		r := newTestRegistry(t, cfg, false)
		defer r.Close()
		return r.ClaimNodeNum(ctx, id, want, preferred)
	}

	// Eight nodes at once, all preferring 855 (as n9000 and n9120 did when
	// numbers were a hash of the id): eight distinct numbers.
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[uint16]string{}
	byID := map[string]uint16{}
	for i := range 8 {
		wg.Go(func() {
			id := fmt.Sprintf("n%d", 9000+i*10)
			n, err := claim(id, 0, 855)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("%s: %v", id, err)
				return
			}
			if other, dup := got[n]; dup {
				t.Errorf("%s and %s both got %d", id, other, n)
			}
			got[n], byID[id] = id, n
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if _, ok := got[855]; !ok {
		t.Fatalf("nobody got the preferred number: %v", got)
	}

	// A restart keeps the number, whatever it prefers now.
	if n, err := claim("n9000", 0, 3); err != nil || n != byID["n9000"] {
		t.Fatalf("restart of n9000: %d %v, want %d", n, err, byID["n9000"])
	}
	// Another node's number is refused.
	if _, err := claim("n7777", byID["n9010"], 0); !errors.Is(err, ErrNodeNumTaken) {
		t.Fatalf("claiming n9010's number: %v", err)
	}
	// Moving n9020 to 1000 frees its old number for the next node.
	old := byID["n9020"]
	if n, err := claim("n9020", 1000, 0); err != nil || n != 1000 {
		t.Fatalf("move to 1000: %d %v", n, err)
	}
	if n, err := claim("n9020", 0, 0); err != nil || n != 1000 {
		t.Fatalf("n9020 after the move: %d %v", n, err)
	}
	if n, err := claim("newcomer", 0, old); err != nil || n != old {
		t.Fatalf("the freed number %d: got %d %v", old, n, err)
	}
	// Bad arguments.
	if _, err := claim("x", 1024, 0); err == nil {
		t.Fatal("number 1024 accepted")
	}
	w := newTestRegistry(t, cfg, true)
	if _, err := w.ClaimNodeNum(ctx, "x", 0, 0); err == nil {
		t.Fatal("a watcher claimed a number")
	}
}
