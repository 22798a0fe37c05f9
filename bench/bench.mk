# Load benchmarks: package bench, driven by cmd/imbench. Included by the root
# Makefile. Results go to $(BENCH_OUT)/<scenario>.json (bench-results/, git-ignored); docs/BENCHMARKS.md has
# the numbers and how to read them. Every target spawns its own imd node(s)
# on free loopback ports and stops them before it returns; extra imbench
# flags go in BENCH_FLAGS (e.g. BENCH_FLAGS="--profile prof").
IMBENCH := $(BIN)/imbench
BENCH_OUT ?= bench-results
BENCH_FLAGS ?=
BENCH_RUN = ./$(IMBENCH)

.PHONY: bench-build bench-conns bench-conns-ws bench-p2p bench-p2p-embedded bench-group bench-group-load bench-login bench-churn bench-find-max bench-1m bench-all bench-targets

bench-build: ## build bin/imd and bin/imbench for the bench-* targets
	@mkdir -p $(BIN) $(BENCH_OUT)
	$(GO) build -o $(BIN)/ ./cmd/imd ./cmd/imbench

bench-conns: bench-build ## 19,000 idle logged-in conns on one node, 2 generator procs: memory per conn (~40 s)
	$(BENCH_RUN) conns --conns 19000 --procs 2 --hold 20s --json $(BENCH_OUT)/conns.json $(BENCH_FLAGS)

bench-conns-ws: bench-build ## bench-conns over WebSocket (--ws): memory per idle WebSocket conn, to set beside bench-conns (~40 s)
	$(BENCH_RUN) conns --conns 19000 --procs 2 --hold 20s --ws --json $(BENCH_OUT)/conns-ws.json $(BENCH_FLAGS)

bench-p2p: bench-build ## 1:1 open loop, memory store, 1000 pairs at 10k msgs/s, plus the echo-relay baseline (~60 s)
	$(BENCH_RUN) p2p --store memory --pairs 1000 --rate 10000 --warmup 5s --duration 15s --baseline-echo \
		--json $(BENCH_OUT)/p2p.json --hgrm $(BENCH_OUT)/p2p.hgrm $(BENCH_FLAGS)

bench-p2p-embedded: bench-build ## 1:1 open loop, embedded store with fsync (group commit), 100 pairs at 20k msgs/s, no per-user limit, plus the durable relay (~50 s; BENCH_FLAGS="--rate 50000" for another rate)
	$(BENCH_RUN) p2p --store embedded --pairs 100 --rate 20000 --warmup 5s --duration 15s --baseline-echo --baseline-durable \
		--imd-arg --send-rate=1000000,--send-burst=1000000 \
		--json $(BENCH_OUT)/p2p-embedded.json --hgrm $(BENCH_OUT)/p2p-embedded.hgrm $(BENCH_FLAGS)

bench-group: bench-build ## fan-out: 20 groups x 100 members, 200 group sends/s (19,800 deliveries/s), plus baseline (~60 s)
	$(BENCH_RUN) group --groups 20 --group-size 100 --rate 200 --warmup 5s --duration 15s --baseline-echo \
		--json $(BENCH_OUT)/group.json $(BENCH_FLAGS)

# bench-group-load: the same fan-out at 6,000 group sends/s (594,000 deliveries/s),
# a load that keeps the node's event loops busy. Deliveries per server
# CPU-second is a capacity figure only there: below it each push is its own
# write(2), at this load several share one (docs/BENCHMARKS.md, "How to read
# the numbers").
bench-group-load: bench-build ## fan-out at 6,000 group sends/s (594,000 deliveries/s), plus baseline: deliveries per server CPU-second at load (~40 s)
	$(BENCH_RUN) group --groups 20 --group-size 100 --rate 6000 --warmup 5s --duration 10s --baseline-echo \
		--json $(BENCH_OUT)/group-load.json $(BENCH_FLAGS)

bench-login: bench-build ## login storm: 19,000 token logins, 2 procs, 1000 in flight each, plus baseline (~20 s)
	$(BENCH_RUN) login --conns 19000 --procs 2 --concurrency 1000 --duration 8s --baseline-echo --json $(BENCH_OUT)/login.json $(BENCH_FLAGS)

bench-churn: bench-build ## churn: 200 concurrent connect-login-send-disconnect cycles for 20 s (~30 s)
	$(BENCH_RUN) churn --slots 200 --warmup 3s --duration 20s --json $(BENCH_OUT)/churn.json $(BENCH_FLAGS)

bench-find-max: bench-build ## step the 1:1 rate x1.5 from 4k/s until p99 > 20 ms, then latency at half the max (~75 s)
	$(BENCH_RUN) p2p --store memory --pairs 1000 --rate 4000 --find-max --step 1.5 --max-p99 20ms --max-steps 7 \
		--warmup 2s --duration 6s --json $(BENCH_OUT)/find-max.json --hgrm $(BENCH_OUT)/find-max.hgrm $(BENCH_FLAGS)

# bench-1m: as many single nodes (19,000 conns each) and generator processes
# (one per ~19,900 conns, each on its own 127.0.0.x) as 1,000,000 connections
# need. The nodes announce a 120 s heartbeat (idle timeout 360 s): at imd's
# default 30 s, 1M connections send 33k heartbeats/s, which alone saturates
# this 2-core box (docs/BENCHMARKS.md). The ramp stops early if MemAvailable
# drops below 3 GiB or after 8 minutes, the hold lasts 30 s, and everything
# is stopped after at most 20 minutes; 6-9 minutes on the shared 2-core box.
BENCH_1M_CONNS ?= 1000000
bench-1m: bench-build ## one-command million-connection run over local nodes (bounded: <= 20 min, memory guard)
	$(BENCH_RUN) conns --conns $(BENCH_1M_CONNS) --store memory --hold 30s --concurrency 200 --loops 1 \
		--imd-arg --heartbeat=120s,--idle-timeout=360s \
		--ramp-timeout 8m --timeout 20m --mem-reserve 3GiB --login-timeout 60s \
		--json $(BENCH_OUT)/1m.json $(BENCH_FLAGS)

# bench-targets: the commands behind the Summary of docs/BENCHMARKS.md, each
# repeated (--repeat) against fresh servers with the relay in every run, so
# the verdicts rest on medians: on a shared machine one run's p99 moves by
# several times between runs of the same build, the relay's too. The
# embedded store's runs set it beside the durable relay (--baseline-durable). The
# summaries go to stdout, every run's report to $(BENCH_OUT)/targets-*.json.
# BENCH_FLAGS must not hold --hgrm or --profile (one run's outputs).
bench-targets: bench-build ## the Summary's target runs, repeated for medians: 100k/s and 1000 pairs x5, group, embedded 5k/s and 50k/s x3 (~20 min)
	$(BENCH_RUN) p2p --store memory --pairs 100 --rate 100000 --warmup 3s --duration 10s --baseline-echo --repeat 5 \
		--json $(BENCH_OUT)/targets-p2p-100k.json $(BENCH_FLAGS)
	$(BENCH_RUN) p2p --store memory --pairs 1000 --rate 10000 --warmup 5s --duration 15s --baseline-echo --repeat 5 \
		--json $(BENCH_OUT)/targets-p2p-1000pairs.json $(BENCH_FLAGS)
	$(BENCH_RUN) group --groups 20 --group-size 100 --rate 6000 --warmup 5s --duration 10s --baseline-echo --repeat 3 \
		--json $(BENCH_OUT)/targets-group-load.json $(BENCH_FLAGS)
	$(BENCH_RUN) p2p --store embedded --pairs 100 --rate 5000 --warmup 5s --duration 15s --baseline-echo --baseline-durable --repeat 3 \
		--imd-arg --send-rate=1000000,--send-burst=1000000 --json $(BENCH_OUT)/targets-embedded-5k.json $(BENCH_FLAGS)
	$(BENCH_RUN) p2p --store embedded --pairs 100 --rate 50000 --warmup 5s --duration 15s --baseline-echo --baseline-durable --repeat 3 \
		--imd-arg --send-rate=1000000,--send-burst=1000000 --json $(BENCH_OUT)/targets-embedded-50k.json $(BENCH_FLAGS)

bench-all: bench-conns bench-p2p bench-p2p-embedded bench-group bench-group-load bench-login bench-churn bench-find-max ## every scenario but bench-1m
