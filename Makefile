# imgn: build, test and run targets. `make help` lists them.
SHELL := /bin/bash
GO ?= go
BIN := bin
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
PROTOC_GEN_GO := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
# Packages whose tests run again under the race detector (they own goroutines).
RACE_DIRS := lb persist engine client mesh bench router internal api events webhook
RACE_PKGS ?= $(foreach d,$(RACE_DIRS),$(if $(wildcard $(d)/*),./$(d)/...))
FUZZTIME ?= 10s
FUZZ_TARGETS := ./codec:FuzzDecode ./codec:FuzzSerializers ./codec:FuzzFastDecode ./codec:FuzzFastEncode ./mesh:FuzzInboundLink ./auth:FuzzVerifyToken ./auth:FuzzVerifyRawToken

# Build stamp for --version (scripts/version.sh: nearest v* tag, commit, commit time).
STAMP := $(shell scripts/version.sh)
VERSION := $(patsubst VERSION=%,%,$(filter VERSION=%,$(STAMP)))
VERSION_PKG := github.com/imgn/imgn/internal/version
LDFLAGS := -X $(VERSION_PKG).Version=$(VERSION) \
	-X $(VERSION_PKG).Commit=$(patsubst COMMIT=%,%,$(filter COMMIT=%,$(STAMP))) \
	-X $(VERSION_PKG).Date=$(patsubst DATE=%,%,$(filter DATE=%,$(STAMP)))

.PHONY: help deps devmongo build dist test race fuzz bench lint deploycheck proto run cluster check check-ws clean crash-embedded store-scale js-deps web test-js test-browser

help: ## list targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

deps: ## install zookeeper and redis-server (apt) when missing and build bin/devmongo (the FerretDB dev server)
	scripts/deps.sh

devmongo: ## rebuild bin/devmongo
	cd tools/devmongo && $(GO) build -trimpath -o ../../bin/devmongo .

build: ## build every command into ./bin, stamped for --version
	@mkdir -p $(BIN)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

dist: ## release archives: static imd, imrouter, imctl for linux/amd64 and linux/arm64 in ./dist, with SHA256SUMS
	GO=$(GO) scripts/dist.sh

test: deps ## the full test suite: unit, end-to-end on real ZooKeeper/Redis/MongoDB, race detector, short fuzz, deployment files (CI runs this)
	$(GO) vet ./...
	cd tools/devmongo && $(GO) vet ./... && $(GO) test -count=1 ./...
	cd tools/deploycheck && $(GO) vet ./... && $(GO) test -count=1 ./...
	cd tools/tracespans && $(GO) vet ./... && $(GO) test -count=1 ./...
	$(GO) test -count=1 ./...
	$(GO) test -count=1 -race $(RACE_PKGS)
	# A count, not a duration: Go 1.26's fuzz coordinator can fail a target with a bare
	# "context deadline exceeded" when a duration ends on a loaded machine (go.dev/issue/75804).
	$(MAKE) --no-print-directory fuzz FUZZTIME=5000x
	$(MAKE) --no-print-directory test-js test-browser

race: deps ## tests of the concurrent packages under the race detector
	$(GO) test -count=1 -race $(RACE_PKGS)

fuzz: ## run each fuzz target for FUZZTIME (default 10s; a count such as 5000x also works)
	@set -e; for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; name=$${t##*:}; \
	  echo "fuzz $$pkg $$name for $(FUZZTIME)"; \
	  $(GO) test -run='^$$' -fuzz="^$$name$$" -fuzztime=$(FUZZTIME) $$pkg; done

bench: deps ## micro-benchmarks of every package (ns/op, B/op, allocs/op)
	$(GO) test -run='^$$' -bench=. -benchmem ./...

lint: ## gofmt check, go vet, staticcheck (pinned)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	GOOS=darwin $(GO) vet ./... # developers on macOS build and run imd too
	$(GO) run $(STATICCHECK) ./...
	cd tools/devmongo && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...
	cd tools/deploycheck && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...
	cd tools/tracespans && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...

deploycheck: build ## check Dockerfile (BuildKit's lint rules, offline), deploy/compose.yaml and deploy/systemd units
	cd tools/deploycheck && $(GO) run . -root ../.. -bin ../../bin

proto: ## regenerate codec/pb and mesh/meshpb from their .proto files (installs protoc if missing)
	@command -v protoc >/dev/null || { apt-get update -qq && apt-get install -y -qq protobuf-compiler; }
	GOBIN=$(CURDIR)/$(BIN) $(GO) install $(PROTOC_GEN_GO)
	PATH=$(CURDIR)/$(BIN):$$PATH protoc --go_out=. --go_opt=paths=source_relative codec/pb/imgn.proto
	PATH=$(CURDIR)/$(BIN):$$PATH protoc --go_out=. --go_opt=paths=source_relative mesh/meshpb/mesh.proto

clean: ## remove build output
	rm -rf $(BIN) dist

check: deps build ## reliability suite: fault checker (5 nodes, every fault, 60 s) and the bad-input attacker; prints the tables
	$(GO) run ./cmd/imcheck check --duration 60s
	$(GO) run ./cmd/imcheck attack

check-ws: deps build ## the fault checker with every client on the nodes' WebSocket listeners (5 nodes, every fault, 60 s)
	$(GO) run ./cmd/imcheck check --ws --duration 60s

crash-embedded: ## long kill -9 proof of the embedded store: 10 rounds of open-loop load at 20k msgs/s, each ended by SIGKILL (~3 min)
	IMD_CRASH_ROUNDS=10 IMD_CRASH_RATE=20000 IMD_CRASH_SECONDS=5 $(GO) test -count=1 -v -timeout 30m \
		-run '^TestAckedMessagesSurviveSIGKILL$$' ./cmd/imd/

STORE_SCALE ?= 10000000
store-scale: ## embedded store: recovery time after SIGKILL and disk bytes per message with STORE_SCALE (10M) messages (~10 min)
	$(GO) test -count=1 -v -timeout 60m -run '^TestRecoveryAtScale$$' ./persist/pebblestore/ -args -pebblestore.scale=$(STORE_SCALE)

cluster: deps build ## run a local 3-node cluster with ZooKeeper, Redis, dev MongoDB and imrouter (Ctrl-C stops it)
	./$(BIN)/imcluster --dir ./data/cluster

run: build ## run one node on the embedded defaults (client 127.0.0.1:9090, WebSocket and the browser app 127.0.0.1:9093, admin 127.0.0.1:9091, data ./data)
	@echo "chat in the browser: http://127.0.0.1:9093/"
	./$(BIN)/imd --ws-listen 127.0.0.1:9093 --web

js-deps: ## npm ci in clients/js when its node_modules is missing or stale
	scripts/jsdeps.sh

web: js-deps ## rebuild web/static/app.js (committed; go build embeds web/static) from web/src and clients/js
	cd clients/js && npm run build:web

test-js: build js-deps ## the TypeScript client's tests (Node's test runner) against a real imd, and a check that web/static/app.js is up to date
	cd clients/js && npm test

test-browser: build ## the browser app in Debian's chromium (installed when missing), driven by puppeteer-core; screenshots of a failure in test-artifacts/browser
	scripts/jsdeps.sh browser
	cd clients/js && npm run test:browser

# Load-generator scenarios (bench-conns, bench-p2p, bench-1m, ...) live in bench/bench.mk.
-include bench/bench.mk
