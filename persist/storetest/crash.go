package storetest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgn/imgn/persist"
)

// crashEnv names the environment variables that make a test binary a
// crash-test child: the store directory and the round.
const crashEnv = "STORETEST_CRASH_DIR"

// CrashChild turns the running test into the child of RunCrash when the
// environment says so: it opens the store in the given directory, appends
// from several writers until it is killed, and prints one "ACK" line per
// acknowledged append. Call it first thing in the test named by RunCrash's
// child argument; in any other process it returns at once.
func CrashChild(t *testing.T, open func(t *testing.T, dir string) persist.Store) {
	dir := os.Getenv(crashEnv)
	if dir == "" {
		return
	}
	round, _ := strconv.Atoi(os.Getenv(crashEnv + "_ROUND"))
	s := open(t, dir)
	time.AfterFunc(time.Minute, func() { os.Exit(3) }) // never outlive a lost parent
	var mu sync.Mutex
	ack := func(id uint64, from, cmid string, inboxes []string, seqs []uint64) {
		var b strings.Builder
		fmt.Fprintf(&b, "ACK %d %s %s", id, from, cmid)
		for j, in := range inboxes {
			fmt.Fprintf(&b, " %s=%d", in, seqs[j])
		}
		b.WriteByte('\n')
		mu.Lock()
		os.Stdout.WriteString(b.String()) // one write(2) per line
		mu.Unlock()
	}
	for w := range 8 {
		go func() {
			from := fmt.Sprintf("r%dw%d", round, w)
			for i := 1; ; i++ {
				id := uint64(round)<<40 | uint64(w)<<32 | uint64(i)
				inboxes := []string{"shared", "own-" + from}
				if i%4 == 0 {
					inboxes = append(inboxes, fmt.Sprint("grp", w%2), fmt.Sprint("peer", (w+1)%8))
				}
				cmid := strconv.Itoa(i)
				if i%5 == 0 { // a retry of the previous message, which may add an inbox
					cmid = strconv.Itoa(i - 1)
				}
				res, err := s.Append(context.Background(), persist.Message{ID: id, From: from, ClientMsgID: cmid, Body: []byte(cmid)}, inboxes)
				if err != nil {
					fmt.Println("ERR", err)
					os.Exit(4)
				}
				ack(res.Msg.ID, from, cmid, inboxes, res.Seqs)
			}
		}()
	}
	select {}
}

type crashAck struct {
	id        uint64
	from      string
	cmid      string
	inboxSeqs map[string]uint64
}

func parseAck(line string) (crashAck, error) {
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "ACK" {
		return crashAck{}, fmt.Errorf("bad line %q", line)
	}
	id, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return crashAck{}, err
	}
	a := crashAck{id: id, from: f[2], cmid: f[3], inboxSeqs: map[string]uint64{}}
	for _, kv := range f[4:] {
		in, seq, ok := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(seq, 10, 64)
		if !ok || err != nil {
			return crashAck{}, fmt.Errorf("bad inbox %q in %q", kv, line)
		}
		a.inboxSeqs[in] = n
	}
	return a, nil
}

// KillAfter runs the test named child of the running test binary as a
// child process with env added to its environment, hands every line it
// prints to ack, and SIGKILLs it once ack has returned true (an
// acknowledged write) killAt times. A line starting with "ERR" fails t, as
// does a child that exits before it was killed. KillAfter returns the
// acknowledgements seen in all, the ones printed before the kill took
// effect included.
func KillAfter(t *testing.T, child string, env []string, killAt int, ack func(line string) bool) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+child+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	seen := 0
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "ERR") {
			t.Errorf("child: %s", line)
		}
		if !ack(line) {
			continue
		}
		if seen++; seen == killAt {
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
		}
	}
	err = cmd.Wait()
	if seen < killAt {
		t.Fatalf("child exited after %d acks (%v): %s", seen, err, stderr.String())
	}
	return seen
}

// RunCrash SIGKILLs a child process that is appending to a durable store,
// rounds times on the same directory, and then checks that every
// acknowledged append survived at its acknowledged seq, that retries
// acknowledged the original message, and that no inbox has a gap or holds a
// message twice. child is the name of the test of the calling package that
// starts with CrashChild (the child runs `-test.run=^child$`); open opens
// the store for the final check.
//
// A process kill keeps the page cache, so this proves the store's atomic
// commit and its ack-after-commit rule, not fsync itself (that needs a
// power-loss simulator).
func RunCrash(t *testing.T, child string, rounds int, open func(t *testing.T, dir string) persist.Store) {
	dir := t.TempDir()
	var acks []crashAck
	for round := range rounds {
		env := []string{crashEnv + "=" + dir, fmt.Sprintf("%s_ROUND=%d", crashEnv, round)}
		killAt := 300 + 150*round // acks seen before the kill
		seen := KillAfter(t, child, env, killAt, func(line string) bool {
			if !strings.HasPrefix(line, "ACK ") {
				return false
			}
			a, err := parseAck(line)
			if err != nil {
				t.Fatal(err)
			}
			acks = append(acks, a)
			return true
		})
		t.Logf("round %d: killed after %d acks (%d more already written to the pipe)", round, killAt, seen-killAt)
	}

	s := reopen(t, open, dir)
	ctx := t.Context()
	inboxes := map[string]map[uint64]uint64{} // inbox -> seq -> id, from acks
	for _, a := range acks {
		m, err := s.Lookup(ctx, a.from, a.cmid)
		if err != nil || m.ID != a.id {
			t.Fatalf("acked message %d (%s/%s) lost: %+v, %v", a.id, a.from, a.cmid, m, err)
		}
		for in, seq := range a.inboxSeqs {
			if inboxes[in] == nil {
				inboxes[in] = map[uint64]uint64{}
			}
			if prev, dup := inboxes[in][seq]; dup && prev != a.id {
				t.Fatalf("inbox %s: seq %d acked for %d and %d", in, seq, prev, a.id)
			}
			inboxes[in][seq] = a.id
		}
	}
	for in, want := range inboxes {
		es := ReadGapFree(t, s, in)
		for seq, id := range want {
			if seq > uint64(len(es)) || es[seq-1].Msg.ID != id {
				t.Fatalf("inbox %s: acked message %d at seq %d is missing", in, id, seq)
			}
		}
	}
	t.Logf("%d acked appends verified across %d inboxes; shared inbox: %d acked, %d stored",
		len(acks), len(inboxes), len(inboxes["shared"]), mustLastSeq(t, s, "shared"))
}
