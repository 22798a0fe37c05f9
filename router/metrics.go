package router

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are a Router's Prometheus collectors.
type metrics struct {
	requests    *prometheus.CounterVec // route requests by result and strategy
	ok          prometheus.Counter
	unavailable prometheus.Counter
	badRequest  prometheus.Counter
	latency     prometheus.Histogram
	nodes       prometheus.Gauge
	available   prometheus.Gauge
	views       prometheus.Counter
}

// Route request results (label "result" of imgn_router_requests_total).
const (
	resultOK          = "ok"
	resultUnavailable = "unavailable"
	resultBadRequest  = "bad_request"
)

func newMetrics(strategy string) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imgn_router_requests_total",
			Help: "Route requests by result (ok, unavailable, bad_request) and strategy.",
		}, []string{"result", "strategy"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "imgn_router_route_seconds",
			Help:    "Time to answer a route request.",
			Buckets: []float64{5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 2.5e-2},
		}),
		nodes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "imgn_router_nodes",
			Help: "Live members in the router's current membership view.",
		}),
		available: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "imgn_router_nodes_available",
			Help: "Members the router may hand out (weight > 0, not draining).",
		}),
		views: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imgn_router_membership_views_total",
			Help: "Membership views applied.",
		}),
	}
	m.ok = m.requests.WithLabelValues(resultOK, strategy)
	m.unavailable = m.requests.WithLabelValues(resultUnavailable, strategy)
	m.badRequest = m.requests.WithLabelValues(resultBadRequest, strategy)
	return m
}

func (m *metrics) register(reg prometheus.Registerer) error {
	var done []prometheus.Collector
	for _, c := range []prometheus.Collector{m.requests, m.latency, m.nodes, m.available, m.views} {
		if err := reg.Register(c); err != nil {
			for _, d := range done { // only ours: equal collectors of another Router stay
				reg.Unregister(d)
			}
			return err
		}
		done = append(done, c)
	}
	return nil
}
