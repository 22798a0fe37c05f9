package pebblestore_test

import (
	"bufio"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/pebblestore"
)

// `make store-scale` sets these to measure recovery with 10 million
// messages; the default run of the test is small and only checks that the
// measurement works.
var (
	scaleMessages = flag.Int("pebblestore.scale", 20000, "messages TestRecoveryAtScale stores before the kill")
	scaleBody     = flag.Int("pebblestore.body", 100, "body bytes of each message in TestRecoveryAtScale")
	scaleRandom   = flag.Bool("pebblestore.random", true, "random (incompressible) bodies in TestRecoveryAtScale; false: one repeated letter")
)

const (
	scaleEnv   = "PEBBLESTORE_SCALE_DIR"
	scaleUsers = 100000 // 1:1 sends between users u0..u99999
)

// scaleInboxes returns the inboxes of message i (1-based) of the scale
// test: its sender's and its recipient's.
func scaleInboxes(i int, buf *[2]string) []string {
	from := (i * 7919) % scaleUsers
	buf[0], buf[1] = "u"+strconv.Itoa(from), "u"+strconv.Itoa((from+1)%scaleUsers)
	return buf[:]
}

type scaleOp struct {
	persist.AppendOp
	inboxes [2]string
	free    chan *scaleOp
	failed  *atomic.Int64
}

func (o *scaleOp) AppendDone(*persist.AppendOp) {
	if o.Err != nil {
		o.failed.Add(1)
	}
	o.free <- o
}

// TestScaleChild is the child process of TestRecoveryAtScale: it stores the
// messages, prints DONE and waits to be killed. Run on its own it does
// nothing.
func TestScaleChild(t *testing.T) {
	dir := os.Getenv(scaleEnv)
	if dir == "" {
		return
	}
	n, _ := strconv.Atoi(os.Getenv(scaleEnv + "_N"))
	size, _ := strconv.Atoi(os.Getenv(scaleEnv + "_BODY"))
	s, err := pebblestore.Open(pebblestore.Options{Dir: dir})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	body := []byte(strings.Repeat("x", size))
	random := os.Getenv(scaleEnv+"_RANDOM") == "1"
	rnd := rand.New(rand.NewPCG(1, 2))
	const window = 4096
	free := make(chan *scaleOp, window)
	var failed atomic.Int64
	for range window {
		free <- &scaleOp{free: free, failed: &failed}
	}
	start := time.Now()
	for i := 1; i <= n; i++ {
		o := <-free
		if random {
			body = make([]byte, size) // the op owns its body until it completes
			for j := range body {
				body[j] = byte(rnd.Uint32())
			}
		}
		o.AppendOp = persist.AppendOp{
			Msg: persist.Message{ID: uint64(i), From: "u" + strconv.Itoa((i*7919)%scaleUsers), ClientMsgID: strconv.Itoa(i),
				Timestamp: time.Now().UnixMilli(), Body: body},
			Inboxes: scaleInboxes(i, &o.inboxes),
			Result:  persist.AppendResult{Seqs: o.Result.Seqs[:0]},
			Done:    o,
		}
		s.AppendAsync(&o.AppendOp)
		if i%1000000 == 0 {
			fmt.Printf("PROGRESS %d %.0f/s\n", i, float64(i)/time.Since(start).Seconds())
		}
	}
	for range window {
		<-free
	}
	if f := failed.Load(); f > 0 {
		fmt.Println("ERR", f, "appends failed")
		os.Exit(3)
	}
	fmt.Printf("DONE %d %.0f/s\n", n, float64(n)/time.Since(start).Seconds())
	select {} // killed by the parent: the WAL holds what no table does yet
}

// TestRecoveryAtScale stores -pebblestore.scale messages in a child process,
// SIGKILLs it, and measures how long the store takes to open (WAL replay
// included) and to answer its first read and append, then the same after a
// clean close, and the disk bytes per message. It checks the recovered
// store is complete.
func TestRecoveryAtScale(t *testing.T) {
	n := *scaleMessages
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestScaleChild$", "-test.count=1")
	random := "0"
	if *scaleRandom {
		random = "1"
	}
	cmd.Env = append(os.Environ(), scaleEnv+"="+dir, scaleEnv+"_N="+strconv.Itoa(n), scaleEnv+"_BODY="+strconv.Itoa(*scaleBody),
		scaleEnv+"_RANDOM="+random)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	done := false
	for sc.Scan() {
		line := sc.Text()
		t.Log("child:", line)
		if strings.HasPrefix(line, "DONE") {
			done = true
			break
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if !done {
		t.Fatal("the child did not store its messages")
	}
	probes := uint64(n)
	measure := func(what string) *pebblestore.Store {
		probes++
		t0 := time.Now()
		s, err := pebblestore.Open(pebblestore.Options{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		opened := time.Since(t0)
		var buf [2]string
		user := scaleInboxes(n, &buf)[1]
		if _, err := s.ReadInbox(t.Context(), user, 0, 50); err != nil {
			t.Fatal(err)
		}
		read := time.Since(t0)
		if _, err := s.Append(t.Context(), persist.Message{ID: probes, From: "probe", ClientMsgID: what}, []string{user}); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: Open %v, first ReadInbox after %v, first append after %v", what, opened, read, time.Since(t0))
		return s
	}
	s := measure("after SIGKILL (WAL replay)")
	// Complete: every inbox has its share, with no gap.
	want := map[string]uint64{}
	var buf [2]string
	for i := 1; i <= n; i++ {
		for _, in := range scaleInboxes(i, &buf) {
			want[in]++
		}
	}
	checked := 0
	for in, count := range want {
		if checked == 1000 {
			break
		}
		checked++
		if last, err := s.LastSeq(t.Context(), in); err != nil || (last != count && last != count+1) {
			t.Fatalf("inbox %s: LastSeq %d, %v; want %d", in, last, err, count)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	tables, wal := diskUse(t, dir)
	t.Logf("%d messages, %d-byte bodies (random: %v), 2 inboxes each: tables %d bytes (%.1f per message), WAL %d bytes",
		n, *scaleBody, *scaleRandom, tables, float64(tables)/float64(n), wal)
	measure("after a clean close").Close()
}

// diskUse returns the bytes of dir's files: tables and everything else but
// the WAL, and the WAL.
func diskUse(t *testing.T, dir string) (tables, wal int64) {
	t.Helper()
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		if strings.HasSuffix(p, ".log") {
			wal += fi.Size()
		} else {
			tables += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tables, wal
}
