# flowscaler: `make demo` runs the daemon with a built-in workload,
# `make test` runs every test (installing what the tests need first).

GO        ?= go
FUZZTIME  ?= 10s
BIN       := bin/flowscaler
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)

# Packages the policy must never reach, directly or not: it is pure.
IO_PACKAGES := ^(net|net/.*|os/exec|google\.golang\.org/grpc.*|github\.com/redis/.*|github\.com/Azure/.*|github\.com/prometheus/.*|go\.opentelemetry\.io/.*)$$

.PHONY: all build demo test deps vet check-policy-pure unit fuzz-short fuzz conformance rules-test deploy-test clean proto proto-check e2e bench load soak

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/flowscaler

demo:
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/flowscaler demo

test: deps vet check-policy-pure proto-check unit fuzz-short conformance rules-test deploy-test

deps:
	bash test/deps.sh

vet:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# The policy takes time as an argument and does no I/O: prove it.
check-policy-pure:
	@bad=$$($(GO) list -deps ./policy/... | grep -E '$(IO_PACKAGES)' || true); \
	if [ -n "$$bad" ]; then echo "policy depends on I/O packages:"; echo "$$bad"; exit 1; fi
	@bad=$$($(GO) list -f '{{join .Imports "\n"}}' ./policy/... | grep -E '^(os|syscall|io/ioutil|io/fs|log|log/slog)$$' || true); \
	if [ -n "$$bad" ]; then echo "policy imports I/O packages directly:"; echo "$$bad"; exit 1; fi
	@clock=$$(grep -nE 'time\.(Now|Since|Until|Sleep|After|Tick|NewTimer|NewTicker)\(' $$(ls policy/*.go | grep -v _test.go) || true); \
	if [ -n "$$clock" ]; then echo "policy reads the clock:"; echo "$$clock"; exit 1; fi
	@echo "policy is pure: no I/O packages, no clock"

unit:
	CI=$${CI:-} $(GO) test -race -count=1 ./...

# Short fuzz runs of every fuzz target; `make fuzz FUZZTIME=10m` for long ones.
fuzz-short fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzDecide$$' -fuzztime=$(FUZZTIME) ./policy/
	$(GO) test -run='^$$' -fuzz='^FuzzParse$$' -fuzztime=$(FUZZTIME) ./scaler/config/
	$(GO) test -run='^$$' -fuzz='^FuzzParseObject$$' -fuzztime=$(FUZZTIME) ./scaler/
	$(GO) test -run='^$$' -fuzz='^FuzzParseMetrics$$' -fuzztime=$(FUZZTIME) ./scaler/
	$(GO) test -run='^$$' -fuzz='^FuzzParseServiceBusQuery$$' -fuzztime=$(FUZZTIME) ./scaler/
	$(GO) test -run='^$$' -fuzz='^FuzzParseCSV$$' -fuzztime=$(FUZZTIME) ./cmd/flowscaler/internal/simulate/

fuzz: FUZZTIME = 5m

# KEDA's own client code (pkg/scalers, v2.21.0) against the daemon; its own
# module keeps the main module's dependencies lean.
conformance:
	cd test/keda && $(GO) test -count=1 ./...

# The alert rules: promtool's syntax check, then every rule's unit tests
# (each fires in one case and stays quiet in another).
rules-test:
	promtool check rules deploy/rules/*.yml
	promtool test rules deploy/rules/tests/*.yml

# The Helm chart, rendered with Helm's SDK and checked against the
# Kubernetes, KEDA and Prometheus Operator types, its config against
# flowscaler's loader, the examples, dashboard and runbook links; its own
# module keeps Helm out of the main module.
deploy-test:
	cd test/deploy && $(GO) vet ./... && CI=$${CI:-} $(GO) test -count=1 ./...

# flowscaler's own gRPC API (proto/): the generated Go code is checked in.
# The plugins are pinned so that the output is reproducible: protoc-gen-go
# at the version of google.golang.org/protobuf in go.mod (proto-check
# insists), protoc-gen-go-grpc at a release. protoc is Debian's
# protobuf-compiler (test/deps.sh).
PROTOC                     ?= protoc
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
PROTO_FILES                := proto/flowscaler/v1/flowscaler.proto
PROTO_TOOLS                := $(CURDIR)/bin/tools
PROTOC_GEN_GO              := $(PROTO_TOOLS)/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)/protoc-gen-go
PROTOC_GEN_GO_GRPC         := $(PROTO_TOOLS)/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)/protoc-gen-go-grpc

$(PROTOC_GEN_GO):
	GOBIN=$(@D) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

$(PROTOC_GEN_GO_GRPC):
	GOBIN=$(@D) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

# protoc-gen-out DIR: generate the Go code of $(PROTO_FILES) under DIR.
define protoc-gen-out
	$(PROTOC) -I proto \
		--plugin=protoc-gen-go=$(PROTOC_GEN_GO) --go_out=$(1) --go_opt=paths=source_relative \
		--plugin=protoc-gen-go-grpc=$(PROTOC_GEN_GO_GRPC) --go-grpc_out=$(1) --go-grpc_opt=paths=source_relative \
		$(PROTO_FILES)
endef

proto: $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC)
	$(call protoc-gen-out,proto)

# Regenerates into a temporary directory and fails when the checked-in code
# differs. Only the line naming protoc's own version is ignored: another
# protoc release generates the same code.
proto-check: $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC)
	@want=$$($(GO) list -m -f '{{.Version}}' google.golang.org/protobuf); \
	if [ "$$want" != "$(PROTOC_GEN_GO_VERSION)" ]; then \
		echo "PROTOC_GEN_GO_VERSION = $(PROTOC_GEN_GO_VERSION): must equal google.golang.org/protobuf in go.mod ($$want)"; exit 1; fi
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(call protoc-gen-out,$$tmp) || exit 1; \
	status=0; \
	for f in $$(find "$$tmp" -name '*.pb.go' -printf '%P\n' | sort); do \
		if [ ! -f "proto/$$f" ]; then echo "proto-check: proto/$$f is missing: run make proto"; status=1; \
		elif ! diff -u -I '^//.*[[:space:]]protoc[[:space:]]' "proto/$$f" "$$tmp/$$f"; then echo "proto-check: proto/$$f is out of date: run make proto"; status=1; fi; \
	done; \
	for f in $$(find proto -name '*.pb.go' | sort); do \
		if [ ! -f "$$tmp/$${f#proto/}" ]; then echo "proto-check: $$f is generated from nothing: remove it or run make proto"; status=1; fi; \
	done; \
	if [ $$status -eq 0 ]; then echo "proto: generated code is up to date"; fi; exit $$status

# flowscaler with KEDA on a real control plane (etcd, kube-apiserver,
# kube-controller-manager, KEDA's operator and adapter, Redis, Prometheus)
# in a private network namespace: see test/e2e/run.sh. Needs root. The first
# run builds Kubernetes and KEDA into $FLOWSCALER_E2E_CACHE (default
# ~/.cache/flowscaler-e2e); later runs reuse them.
e2e:
	GO=$(GO) bash test/e2e/run.sh

# Scale (BENCHMARKS.md): 10,000 ScaledObjects over 500 Redis streams polled
# as KEDA polls them. `bench` runs the daemon in the test process; `load`
# runs `flowscaler serve` apart, pinned to one core, for its own CPU and
# memory; `soak` is 24 h of 15 s polling compressed 120× (about 12 minutes)
# and fails when memory or goroutines grow.
LOAD := bin/flowscaler-load
# The daemon runs on core 0 (the tool's --cpus 0); with a second core the
# tool and its redis-server take core 1, so they do not share the daemon's.
LOAD_PIN := $(shell [ "$$(nproc)" -gt 1 ] && command -v taskset >/dev/null && echo taskset -c 1)

bench:
	CI=$${CI:-} $(GO) test -run='^$$' -bench='^BenchmarkScale$$' -benchtime=4x ./cmd/flowscaler-load/internal/load/

$(LOAD): build
	$(GO) build -o $(LOAD) ./cmd/flowscaler-load

load: $(LOAD)
	$(LOAD_PIN) $(LOAD) --objects 10000 --streams 500 --compression 1 --intervals 8 --sample-every 8

soak: $(LOAD)
	$(LOAD_PIN) $(LOAD) --objects 200 --streams 10 --compression 120 --duration 24h --sample-every 180 --check-growth

clean:
	rm -rf bin
