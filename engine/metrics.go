package engine

import (
	"github.com/imgn/imgn/codec"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics holds the server's Prometheus collectors. Per-command and per-code
// counters are resolved once into arrays so the hot path does no label
// lookups.
type metrics struct {
	connections   prometheus.GaugeFunc
	sessions      prometheus.GaugeFunc
	accepted      prometheus.Counter
	rejected      prometheus.Counter
	logins        *prometheus.CounterVec
	framesIn      [256]prometheus.Counter
	bytesIn       prometheus.Counter
	bytesOut      prometheus.Counter
	storeLatency  prometheus.Histogram
	pushLatency   prometheus.Histogram
	errors        map[codec.ErrorCode]prometheus.Counter
	errorsVec     *prometheus.CounterVec
	slowConsumers prometheus.Counter
	encodeErrors  prometheus.Counter
	pushes        prometheus.Counter
	messages      prometheus.Counter
	// inbox appends executed here vs forwarded to the owner node
	appendsLocal, appendsForwarded prometheus.Counter
	remotePushes                   prometheus.Counter
	loopTriggers                   prometheus.Counter
	directWrites, directShort      prometheus.Counter
	appendHandoffs                 prometheus.Counter
	typingDropped                  prometheus.Counter
}

func newMetrics(reg *prometheus.Registry, s *Server) *metrics {
	m := &metrics{
		connections: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "imgn_connections", Help: "Open client connections."},
			func() float64 { return float64(s.conns.len()) }),
		sessions: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "imgn_sessions", Help: "Logged-in client connections."},
			func() float64 { _, n := s.sessions.count(); return float64(n) }),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_connections_accepted_total", Help: "Client connections accepted."}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_connections_rejected_total", Help: "Client connections refused (connection limit or shutdown)."}),
		logins:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imgn_logins_total", Help: "Login attempts by result."}, []string{"result"}),
		bytesIn:  prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_bytes_in_total", Help: "Bytes of frames received."}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_bytes_out_total", Help: "Bytes handed to the kernel for clients."}),
		storeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "imgn_store_append_seconds", Help: "Latency of message store appends (durable when it returns).",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16)}),
		pushLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "imgn_push_latency_seconds", Help: "Time from a send's arrival to its pushes being queued.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16)}),
		errorsVec:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imgn_errors_total", Help: "Error frames sent and connections closed, by code."}, []string{"code"}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_slow_consumer_closes_total", Help: "Connections closed because their output backed up."}),
		encodeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_encode_errors_total",
			Help: "Frames the server could not encode; a reply is replaced by ERROR INTERNAL."}),
		pushes:   prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_pushes_total", Help: "Messages pushed to online devices."}),
		messages: prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_messages_stored_total", Help: "Messages accepted and stored (duplicates excluded)."}),
		errors:   map[codec.ErrorCode]prometheus.Counter{},
	}
	appendsVec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imgn_inbox_appends_total",
		Help: "Inbox appends of messages this node accepted, by where they ran: local (this node owns the inbox) or forwarded (to the owner)."}, []string{"where"})
	m.appendsLocal = appendsVec.WithLabelValues("local")
	m.appendsForwarded = appendsVec.WithLabelValues("forwarded")
	m.remotePushes = prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_remote_pushes_total", Help: "Push requests sent to other nodes (one per node per message)."})
	m.loopTriggers = prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_loop_triggers_total",
		Help: "Times a goroutine woke an event loop to write output queued for its connections (one per loop per batch, not per message)."})
	directVec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imgn_direct_writes_total",
		Help: "Writes an event loop, or the embedded store's completer, made itself to an idle socket of a connection of another loop, sparing that loop a wake-up: full (the socket took it all) or short (the rest went to the connection's loop)."}, []string{"result"})
	m.directWrites = directVec.WithLabelValues("full")
	m.directShort = directVec.WithLabelValues("short")
	m.appendHandoffs = prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_append_handoffs_total",
		Help: "Sends an event loop handed to the loop already appending to the memory store, instead of waiting for the store's lock."})
	m.typingDropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "imgn_typing_dropped_total",
		Help: "TYPING notifications dropped over the per-user typing rate."})
	framesVec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imgn_frames_in_total", Help: "Frames received, by command."}, []string{"command"})
	for i := range m.framesIn {
		m.framesIn[i] = framesVec.WithLabelValues(codec.Command(i).String())
	}
	for _, ci := range codec.Codes {
		m.errors[ci.Code] = m.errorsVec.WithLabelValues(ci.Name)
	}
	reg.MustRegister(m.connections, m.sessions, m.accepted, m.rejected, m.logins, framesVec, m.bytesIn, m.bytesOut,
		m.storeLatency, m.pushLatency, m.errorsVec, m.slowConsumers, m.encodeErrors, m.pushes, m.messages, appendsVec, m.remotePushes, m.loopTriggers, directVec, m.appendHandoffs, m.typingDropped)
	// The registry may be shared by several servers in one process (tests);
	// the process collectors are registered once.
	_ = reg.Register(collectors.NewGoCollector())
	_ = reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// countError counts one error frame or error close. Codes are fixed, so the
// map is read-only after construction.
func (m *metrics) countError(code codec.ErrorCode) {
	if c, ok := m.errors[code]; ok {
		c.Inc()
	}
}
