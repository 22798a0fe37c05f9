package pebblestore_test

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgn/imgn/persist"
	"github.com/imgn/imgn/persist/pebblestore"
)

// TestLegacyBoltFile: a data directory of the old bbolt store is refused
// with an error that names the file and says what to do, and is left as it
// was.
func TestLegacyBoltFile(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, pebblestore.LegacyBoltFile)
	if err := os.WriteFile(old, []byte("bbolt pages"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := pebblestore.Open(pebblestore.Options{Dir: dir})
	if err == nil {
		s.Close()
		t.Fatal("Open of a directory holding the bbolt file succeeded")
	}
	for _, want := range []string{old, "move it out of the directory", "another data directory"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("Open wrote into the refused directory: %d entries", len(ents))
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage")
	if err := os.MkdirAll(garbage, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"CURRENT", "MANIFEST-000001", "marker.manifest.000001.MANIFEST-000001"} {
		if err := os.WriteFile(filepath.Join(garbage, name), []byte("not pebble at all"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ok := filepath.Join(dir, "ok")
	cases := []struct {
		name string
		opts pebblestore.Options
		is   error // optional
	}{
		{"empty dir", pebblestore.Options{}, persist.ErrInvalid},
		{"dir is a file", pebblestore.Options{Dir: file}, nil},
		{"not a store", pebblestore.Options{Dir: garbage}, nil},
		{"negative MaxBatch", pebblestore.Options{Dir: ok, MaxBatch: -1}, persist.ErrInvalid},
		{"negative QueueSize", pebblestore.Options{Dir: ok, QueueSize: -1}, persist.ErrInvalid},
		{"negative MaxDiskBytes", pebblestore.Options{Dir: ok, MaxDiskBytes: -1}, persist.ErrInvalid},
		{"negative retention", pebblestore.Options{Dir: ok, Retention: persist.Retention{MaxAge: -time.Hour}}, persist.ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := pebblestore.Open(tc.opts)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if s != nil {
				t.Fatal("Open returned a store with an error")
			}
			if !strings.HasPrefix(err.Error(), "pebblestore: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
			if tc.opts.Dir != "" && tc.is == nil && !strings.Contains(err.Error(), tc.opts.Dir) {
				t.Errorf("error %q does not name the directory", err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("err = %v, want one wrapping %v", err, tc.is)
			}
		})
	}
}

// TestDirLockedByAnotherStore: a second store on the same directory is
// refused while the first is open, and opens once it is closed.
func TestDirLockedByAnotherStore(t *testing.T) {
	dir := t.TempDir()
	s := openAt(t, dir, pebblestore.Options{})
	if s2, err := pebblestore.Open(pebblestore.Options{Dir: dir}); err == nil {
		s2.Close()
		t.Fatal("second Open of a directory in use succeeded")
	} else if !strings.Contains(err.Error(), dir) {
		t.Fatalf("second Open: %v, want an error naming the directory", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	openAt(t, dir, pebblestore.Options{}).Close()
}

// TestMetrics: the store's metrics are registered and move with commits.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := openAt(t, t.TempDir(), pebblestore.Options{Registry: reg})
	defer s.Close()
	appendSerially(t, s, 20, nil)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		switch {
		case m.GetHistogram() != nil:
			got[mf.GetName()] = float64(m.GetHistogram().GetSampleCount())
		case m.GetCounter() != nil:
			got[mf.GetName()] = m.GetCounter().GetValue()
		default:
			got[mf.GetName()] = m.GetGauge().GetValue()
		}
	}
	for _, name := range []string{"imgn_store_batch_requests", "imgn_store_commit_seconds", "imgn_store_fsync_seconds",
		"imgn_store_queue_wait_seconds", "imgn_store_build_seconds", "imgn_store_apply_seconds", "imgn_store_complete_seconds"} {
		if got[name] < 20 {
			t.Errorf("%s counted %v observations after 20 serial appends, want >= 20", name, got[name])
		}
	}
	for _, name := range []string{"imgn_store_wal_bytes_total", "imgn_store_compaction_debt_bytes", "imgn_store_disk_bytes",
		"imgn_store_disk_free_bytes", "imgn_store_full", "imgn_store_queue_length",
		"imgn_store_retention_removed_messages_total", "imgn_store_retention_removed_entries_total"} {
		if _, ok := got[name]; !ok {
			t.Errorf("metric %s not registered", name)
		}
	}
	if got["imgn_store_disk_free_bytes"] <= 0 || got["imgn_store_disk_bytes"] <= 0 {
		t.Errorf("disk figures not read at open: %v", got)
	}
	// A second store on the same registry is refused, not a panic.
	if s2, err := pebblestore.Open(pebblestore.Options{Dir: t.TempDir(), Registry: reg}); err == nil {
		s2.Close()
		t.Fatal("two stores registered on one registry")
	}
}

// TestRetentionSurvivesReopen: what a pass removed stays removed, and
// FirstSeq stays, after a restart (with or without retention).
func TestRetentionSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s := openAt(t, dir, pebblestore.Options{Retention: persist.Retention{InboxMax: 3}})
	now := time.Now().UnixMilli()
	for i := uint64(1); i <= 10; i++ {
		if _, err := s.Append(t.Context(), persist.Message{ID: i, From: "a", ClientMsgID: fmt.Sprint(i), Timestamp: now}, []string{"u"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.EnforceRetention(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openAt(t, dir, pebblestore.Options{})
	defer s.Close()
	if first, _ := s.FirstSeq(t.Context(), "u"); first != 8 {
		t.Fatalf("FirstSeq after reopen = %d, want 8", first)
	}
	es, err := s.ReadInbox(t.Context(), "u", 0, 100)
	if err != nil || len(es) != 3 || es[0].Seq != 8 {
		t.Fatalf("ReadInbox after reopen = %d entries from %v, %v; want seqs 8..10", len(es), es, err)
	}
	if r, err := s.Append(t.Context(), persist.Message{ID: 11, From: "a", ClientMsgID: "11", Timestamp: now}, []string{"u"}); err != nil || r.Seqs[0] != 11 {
		t.Fatalf("append after reopen: %+v, %v; want seq 11", r, err)
	}
}

// TestRetentionInBackground: with a short interval the store enforces its
// retention by itself.
func TestRetentionInBackground(t *testing.T) {
	s := openAt(t, t.TempDir(), pebblestore.Options{Retention: persist.Retention{InboxMax: 2, Interval: 10 * time.Millisecond}})
	defer s.Close()
	for i := uint64(1); i <= 5; i++ {
		if _, err := s.Append(t.Context(), persist.Message{ID: i, From: "a", ClientMsgID: fmt.Sprint(i)}, []string{"u"}); err != nil {
			t.Fatal(err)
		}
	}
	for {
		first, err := s.FirstSeq(t.Context(), "u")
		if err != nil {
			t.Fatal(err)
		}
		if first == 4 && s.StoreStats().RetentionPasses > 0 {
			break
		}
		select {
		case <-t.Context().Done():
			t.Fatal("no background pass trimmed the inbox")
		case <-time.After(5 * time.Millisecond):
		}
	}
	if st := s.StoreStats(); st.RemovedEntries != 3 {
		t.Fatalf("stats %+v: want 3 entries removed", st)
	}
}

// TestAgeRetentionFreesDisk: removing messages by age gives their disk
// space back (the pass compacts what it removed).
func TestAgeRetentionFreesDisk(t *testing.T) {
	dir := t.TempDir()
	s := openAt(t, dir, pebblestore.Options{Retention: persist.Retention{MaxAge: time.Hour}, MemTableSize: 1 << 20})
	defer s.Close()
	old := time.Now().Add(-2 * time.Hour).UnixMilli()
	body := make([]byte, 2000)
	if _, err := rand.Read(body); err != nil { // incompressible: the bodies dominate the disk use
		t.Fatal(err)
	}
	const n = 4000
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				m := persist.Message{ID: uint64(i + 1), From: "a", ClientMsgID: fmt.Sprint(i), Timestamp: old, Body: body}
				if _, err := s.Append(t.Context(), m, []string{fmt.Sprint("u", i%100)}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	before := dirSize(t, dir)
	if err := s.EnforceRetention(t.Context()); err != nil {
		t.Fatal(err)
	}
	if st := s.StoreStats(); st.RemovedMessages != n || st.RemovedEntries != n {
		t.Fatalf("stats %+v: want %d messages and entries removed", st, n)
	}
	// Pebble deletes the files a compaction made obsolete in the
	// background. (Without the pass's compaction they stay for minutes.)
	deadline := time.After(30 * time.Second)
	for {
		after := dirSize(t, dir)
		if after <= before/4 {
			t.Logf("%d messages of %d bytes: %d bytes of tables before the pass, %d after", n, len(body), before, after)
			return
		}
		select {
		case <-deadline:
			t.Fatalf("tables take %d bytes after removing every message, %d before: the space did not come back", after, before)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func dirSize(t *testing.T, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && !strings.HasSuffix(e.Name(), ".log") {
			n += fi.Size()
		}
	}
	return n
}

// TestCommitStallsCounted: a memtable that fills makes Pebble rotate it and
// its write-ahead log on the commit path; the wait is counted by cause.
func TestCommitStallsCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := openAt(t, t.TempDir(), pebblestore.Options{Registry: reg, MemTableSize: 1 << 20})
	defer s.Close()
	appendSerially(t, s, 800, make([]byte, 4<<10)) // 3.2 MB of bodies: the 1 MiB memtable fills at least twice
	got := countersByLabel(t, reg, "cause")
	if got["imgn_store_commit_stalls_total wal_rotation"] < 2 || got["imgn_store_commit_stall_seconds_total wal_rotation"] <= 0 {
		t.Fatalf("stalls after filling a 1 MiB memtable three times: %v", got)
	}
	for _, cause := range []string{"memtable", "l0"} {
		if _, ok := got["imgn_store_commit_stalls_total "+cause]; !ok {
			t.Errorf("no stall counter for %s: %v", cause, got)
		}
	}
}

// TestBackgroundJobsCounted: Pebble's flushes and compactions are counted
// by job as they end, with their time. A 1 MiB memtable filled three times
// flushes at least twice, and with two L0 tables allowed at most the flushed
// tables are compacted.
func TestBackgroundJobsCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := openAt(t, t.TempDir(), pebblestore.Options{Registry: reg, MemTableSize: 1 << 20, L0CompactionThreshold: 2})
	appendSerially(t, s, 800, make([]byte, 4<<10))
	if err := s.Close(); err != nil { // waits for the flushes and compactions under way
		t.Fatal(err)
	}
	got := countersByLabel(t, reg, "job")
	if got["imgn_store_background_jobs_total flush"] < 2 || got["imgn_store_background_seconds_total flush"] <= 0 {
		t.Errorf("flushes after filling a 1 MiB memtable three times: %v", got)
	}
	if got["imgn_store_background_jobs_total compaction"] < 1 {
		t.Errorf("no compaction counted with L0CompactionThreshold 2: %v", got)
	}
	// The first job is rare by definition: lowered where this process may
	// restore thread priorities (root, as in CI).
	if os.Geteuid() == 0 {
		if got := countersByLabel(t, reg, "event"); got["imgn_store_background_priority_total lowered"] < 1 {
			t.Errorf("no job lowered: %v", got)
		}
	}

	// Turned off, nothing is lowered and the counters are not exported.
	reg = prometheus.NewRegistry()
	s = openAt(t, t.TempDir(), pebblestore.Options{Registry: reg, MemTableSize: 1 << 20, BackgroundNice: -1})
	appendSerially(t, s, 300, make([]byte, 4<<10))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	got = countersByLabel(t, reg, "job")
	if got["imgn_store_background_jobs_total flush"] < 1 {
		t.Fatalf("no flush after filling a 1 MiB memtable: %v", got)
	}
	if got := countersByLabel(t, reg, "event"); len(got) != 0 {
		t.Errorf("priority counters of a store that never lowers jobs: %v", got)
	}
}

// countersByLabel returns the counters of reg that have label, keyed
// "<metric name> <label value>".
func countersByLabel(t *testing.T, reg *prometheus.Registry, label string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label {
					got[mf.GetName()+" "+l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return got
}

// appendSerially appends n messages with body from "a" to inbox "u", one
// at a time, each its own commit.
func appendSerially(t *testing.T, s *pebblestore.Store, n int, body []byte) {
	t.Helper()
	for i := range n {
		if _, err := s.Append(t.Context(), persist.Message{ID: uint64(i + 1), From: "a", ClientMsgID: fmt.Sprint(i), Body: body}, []string{"u"}); err != nil {
			t.Fatal(err)
		}
	}
}
