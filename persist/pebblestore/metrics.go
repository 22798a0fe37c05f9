package pebblestore

import (
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the store's Prometheus metrics. The histograms are updated by
// the committer and the WAL's file; the rest read the housekeeper's cached
// figures at scrape time.
type metrics struct {
	batch  prometheus.Histogram
	commit prometheus.Histogram
	fsync  prometheus.Histogram
	// The stages of a request's way through the committer, beside commit:
	// waiting in the queue, the building of its batch, and the completion
	// of the batch's requests once it is durable.
	queueWait prometheus.Histogram
	build     prometheus.Histogram
	apply     prometheus.Histogram
	complete  prometheus.Histogram
	// Time and count of the waits inside Pebble's apply, by cause (see
	// observeStalls): they hold up the committer, and every request queued
	// behind it, for their whole length.
	stallSeconds, stalls [numStallCauses]prometheus.Counter
	// Pebble's background jobs (flushes, compactions) that ended, and
	// the wall time they took, by job: they compete with the commit path
	// for the CPU and the disk, and a latency tail often lines up with them.
	jobs, jobSeconds *prometheus.CounterVec
	// Jobs run at a lower CPU priority, and those restored before they
	// ended (see backgroundPriority).
	priority [numPriorityEvents]prometheus.Counter
}

// The events of imgn_store_background_priority_total.
const (
	priorityLowered       = iota // a job began at a lower priority
	priorityRestoredEarly        // a lowered job was restored before its end: writes came to need it
	numPriorityEvents
)

var priorityEventNames = [numPriorityEvents]string{"lowered", "restored_early"}

// The causes of a wait inside Pebble's apply (pebble.BatchCommitStats).
const (
	stallWALRotation = iota // a new memtable and WAL: the old WAL closed and synced, the directory synced
	stallMemtable           // too many memtables waiting for their flush
	stallL0                 // too many L0 sublevels waiting for compaction
	numStallCauses
)

var stallCauseNames = [numStallCauses]string{"wal_rotation", "memtable", "l0"}

// The jobs of imgn_store_background_jobs_total.
const (
	jobFlush      = "flush"
	jobCompaction = "compaction"
)

// eventListener counts Pebble's background jobs as they end. Pebble calls
// it from its flush and compaction goroutines; the counters are safe for
// concurrent use.
func (m *metrics) eventListener() *pebble.EventListener {
	// Made now, so each job's counters read zero until its first one ends.
	flushes, flushSeconds := m.jobs.WithLabelValues(jobFlush), m.jobSeconds.WithLabelValues(jobFlush)
	compactions, compactionSeconds := m.jobs.WithLabelValues(jobCompaction), m.jobSeconds.WithLabelValues(jobCompaction)
	return &pebble.EventListener{
		FlushEnd: func(info pebble.FlushInfo) {
			flushes.Inc()
			flushSeconds.Add(info.Duration.Seconds())
		},
		CompactionEnd: func(info pebble.CompactionInfo) {
			compactions.Inc()
			compactionSeconds.Add(info.Duration.Seconds())
		},
	}
}

// observeStalls counts the waits of one apply. Committer only.
func (m *metrics) observeStalls(cs *pebble.BatchCommitStats) {
	for i, d := range [numStallCauses]time.Duration{cs.WALRotationDuration, cs.MemTableWriteStallDuration, cs.L0ReadAmpWriteStallDuration} {
		if d > 0 {
			m.stallSeconds[i].Add(d.Seconds())
			m.stalls[i].Inc()
		}
	}
}

func newMetrics() *metrics {
	// 50 µs .. 1.6 s
	lat := func(name, help string) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help,
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16)})
	}
	m := &metrics{
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "imgn_store_batch_requests",
			Help:    "Requests per committed batch (one WAL write and one fsync each).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 13), // 1 .. 4096
		}),
		commit: lat("imgn_store_commit_seconds",
			"Time to commit one batch: from its hand-over to Pebble (WAL write, memtable insert) until the completer found its WAL sync done; the completer finishes batches in order, so this includes completing the batches before it, and may include the sync of the batch before it."),
		fsync: lat("imgn_store_fsync_seconds", "Time of one fsync of the write-ahead log."),
		queueWait: lat("imgn_store_queue_wait_seconds",
			"Time from a request's arrival in the write queue to the start of the building of its batch."),
		build: lat("imgn_store_build_seconds",
			"Time to build one batch: apply its requests and add their writes to the Pebble batch."),
		apply: lat("imgn_store_apply_seconds",
			"Time to hand one batch to Pebble without waiting for its sync: the WAL write into the log's buffer and the memtable insert, on the committer."),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imgn_store_background_jobs_total",
			Help: "Pebble's background jobs that ended, by job: flush (a full memtable written to a table) or compaction (tables merged into the next level).",
		}, []string{"job"}),
		jobSeconds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imgn_store_background_seconds_total",
			Help: "Wall time of Pebble's background jobs that ended, by job (flush, compaction): reading, encoding and writing, including waits for the CPU and the disk.",
		}, []string{"job"}),
		complete: lat("imgn_store_complete_seconds",
			"Time from the end of a batch's commit to the end of its requests' completions (read view published, callers woken)."),
	}
	for i, event := range priorityEventNames {
		m.priority[i] = prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_store_background_priority_total",
			ConstLabels: prometheus.Labels{"event": event},
			Help:        "Pebble jobs run at a lower CPU priority (event lowered: they were rare, so the event loops and the committer may preempt them) and those restored before they ended (restored_early: writes came to need them)."})
	}
	for i, cause := range stallCauseNames {
		labels := prometheus.Labels{"cause": cause}
		m.stallSeconds[i] = prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_store_commit_stall_seconds_total", ConstLabels: labels,
			Help: "Time the committer waited inside Pebble's apply, by cause: wal_rotation (a new memtable and write-ahead log), memtable (too many memtables waiting for their flush), l0 (too many L0 sublevels waiting for compaction)."})
		m.stalls[i] = prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_store_commit_stalls_total", ConstLabels: labels,
			Help: "Applies that waited inside Pebble, by cause (see imgn_store_commit_stall_seconds_total)."})
	}
	return m
}

// register adds the metrics to reg; s provides the cached figures.
func (m *metrics) register(reg prometheus.Registerer, s *Store) error {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	collectors := []prometheus.Collector{
		m.batch, m.commit, m.fsync, m.queueWait, m.build, m.apply, m.complete, m.jobs, m.jobSeconds,
		counter("imgn_store_wal_bytes_total", "Bytes written to the write-ahead log since the store opened.",
			func() float64 { return float64(s.walBytes.Load()) }),
		gauge("imgn_store_compaction_debt_bytes", "Estimated bytes compactions must still rewrite.",
			func() float64 { return float64(s.debtBytes.Load()) }),
		gauge("imgn_store_disk_bytes", "Space taken by the store's files.",
			func() float64 { return float64(s.diskBytes.Load()) }),
		gauge("imgn_store_disk_free_bytes", "Free space on the store's file system.",
			func() float64 { return float64(s.freeBytes.Load()) }),
		gauge("imgn_store_full", "1 while writes are refused for lack of disk space.",
			func() float64 { return b2f(s.full.Load()) }),
		gauge("imgn_store_queue_length", "Requests waiting for the committer.",
			func() float64 { return float64(len(s.queue)) }),
		counter("imgn_store_retention_removed_messages_total", "Messages removed by retention.",
			func() float64 { return float64(s.removedMsgs.Load()) }),
		counter("imgn_store_retention_removed_entries_total", "Inbox entries removed by retention.",
			func() float64 { return float64(s.removedEnts.Load()) }),
		counter("imgn_store_dedup_reads_total", "Dedup checks of appends that searched the store (the in-memory filter could not rule the key out).",
			func() float64 { return float64(s.dedupReads.Load()) }),
		gauge("imgn_store_dedup_filter_bytes", "Memory of the in-memory filter of dedup keys (0 until it is built).",
			func() float64 { return float64(s.filterBytes.Load()) }),
	}
	for i := range numStallCauses {
		collectors = append(collectors, m.stallSeconds[i], m.stalls[i])
	}
	if s.pri.enabled() { // absent where jobs are never lowered
		for _, c := range m.priority {
			collectors = append(collectors, c)
		}
	}
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// meteredFS times the syncs of write-ahead log files (names ending in
// ".log") for imgn_store_fsync_seconds; everything else passes through.
type meteredFS struct {
	vfs.FS
	fsync prometheus.Histogram
}

func (fs *meteredFS) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil || !strings.HasSuffix(name, ".log") {
		return f, err
	}
	return &meteredFile{File: f, fsync: fs.fsync}, nil
}

func (fs *meteredFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, category)
	return fs.wrap(name, f, err)
}

func (fs *meteredFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, category)
	return fs.wrap(newname, f, err)
}

// Unwrap returns the wrapped file system.
func (fs *meteredFS) Unwrap() vfs.FS { return fs.FS }

type meteredFile struct {
	vfs.File
	fsync prometheus.Histogram
}

func (f *meteredFile) Sync() error {
	t0 := time.Now()
	err := f.File.Sync()
	f.fsync.Observe(time.Since(t0).Seconds())
	return err
}

func (f *meteredFile) SyncData() error {
	t0 := time.Now()
	err := f.File.SyncData()
	f.fsync.Observe(time.Since(t0).Seconds())
	return err
}
