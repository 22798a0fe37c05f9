package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	clusterapi "github.com/imgn/imgn/cluster"
	"github.com/imgn/imgn/internal/testsvc"
	"github.com/imgn/imgn/internal/testutil"
	"github.com/imgn/imgn/mesh"
	"github.com/imgn/imgn/mesh/membership"
	"github.com/imgn/imgn/mesh/zkregistry"
	"github.com/imgn/imgn/persist"
)

// echoHandler answers forwarded appends with seq 1 per inbox and records
// who it is, so a test can tell which node served a request.
type echoHandler struct{ id string }

func (h echoHandler) HandleAppend(_ context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	seqs := make([]uint64, len(inboxes))
	for i := range seqs {
		seqs[i] = 1
	}
	msg.From = h.id // tell the caller which node answered
	return persist.AppendResult{Msg: msg, Seqs: seqs}, nil
}
func (h echoHandler) HandleAppendEntries(ctx context.Context, msg persist.Message, inboxes []string) (persist.AppendResult, error) {
	return h.HandleAppend(ctx, msg, inboxes)
}
func (echoHandler) HandleAdmin(clusterapi.AdminRequest) int             { return 0 }
func (echoHandler) HandlePush(persist.Message, []clusterapi.PushTarget) {}
func (echoHandler) HandleKick(string, string, uint64)                   {}
func (echoHandler) HandleSignal(clusterapi.Signal)                      {}

// TestNodesStartedTogetherFormAFullMesh starts 3 and then 5 nodes at the same
// instant on a real ZooKeeper, 20 rounds each, and checks every node sees
// every other and can forward to each of them (the original design's nodes started at
// the same moment missed each other).
func TestNodesStartedTogetherFormAFullMesh(t *testing.T) {
	zk := testsvc.StartZooKeeper(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	rounds := 20
	if testing.Short() {
		rounds = 3
	}
	for _, size := range []int{3, 5} {
		for round := range rounds {
			root := fmt.Sprintf("/im/rounds-%d-%d", size, round)
			clusters := make([]*mesh.Cluster, size)
			regs := make([]*zkregistry.Registry, size)
			var wg sync.WaitGroup
			start := make(chan struct{})
			errs := make([]error, size)
			for i := range size {
				id := fmt.Sprintf("n%d", i)
				wg.Go(func() {
					<-start
					reg, err := zkregistry.New(zkregistry.Config{Servers: []string{zk.Addr}, Root: root, SessionTimeout: 2 * time.Second, Logger: quiet})
					if err != nil {
						errs[i] = err
						return
					}
					regs[i] = reg
					links, err := mesh.NewLinks(mesh.LinkConfig{Logger: quiet})
					if err != nil {
						errs[i] = err
						return
					}
					cl, err := mesh.New(mesh.Config{Self: membership.NodeInfo{ID: id, ClientAddr: "127.0.0.1:1", MeshAddr: "127.0.0.1:0", Weight: 100},
						Registry: reg, Transport: links, Logger: quiet})
					if err != nil {
						errs[i] = err
						return
					}
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					errs[i] = cl.Start(ctx, echoHandler{id: id})
					clusters[i] = cl
				})
			}
			close(start)
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("size %d round %d node %d: %v", size, round, i, err)
				}
			}
			for i, cl := range clusters {
				testutil.Until(t, 20*time.Second, fmt.Sprintf("round %d: n%d sees %d members", round, i, size), func() bool { return len(cl.Members()) == size })
			}
			// Every node forwards to every other and hears back from it.
			for i, from := range clusters {
				for j := range clusters {
					if i == j {
						continue
					}
					target := fmt.Sprintf("n%d", j)
					var res persist.AppendResult
					var err error
					testutil.Until(t, 10*time.Second, fmt.Sprintf("n%d -> %s", i, target), func() bool {
						ctx, cancel := context.WithTimeout(context.Background(), time.Second)
						defer cancel()
						res, err = from.Append(ctx, target, persist.Message{ID: 1, ClientMsgID: "x"}, []string{"u"})
						return err == nil
					})
					if res.Msg.From != target {
						t.Fatalf("n%d -> %s answered by %q", i, target, res.Msg.From)
					}
				}
			}
			// All nodes agree on every owner.
			for k := range 200 {
				user := fmt.Sprint("user", k)
				want, _ := clusters[0].Owner(user)
				for _, cl := range clusters[1:] {
					if got, _ := cl.Owner(user); got != want {
						t.Fatalf("round %d: owners disagree for %s: %s vs %s", round, user, got, want)
					}
				}
			}
			for i := range clusters {
				_ = clusters[i].Close()
				_ = regs[i].Close()
			}
		}
	}
}
