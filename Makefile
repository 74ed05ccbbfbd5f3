# flowscaler: `make demo` runs the daemon with a built-in workload,
# `make test` runs every test (installing what the tests need first).

GO        ?= go
FUZZTIME  ?= 10s
BIN       := bin/flowscaler
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)

# Packages the policy must never reach, directly or not: it is pure.
IO_PACKAGES := ^(net|net/.*|os/exec|google\.golang\.org/grpc.*|github\.com/redis/.*|github\.com/Azure/.*|github\.com/prometheus/.*)$$

.PHONY: all build demo test deps vet check-policy-pure unit fuzz-short fuzz conformance rules-test deploy-test clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/flowscaler

demo:
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/flowscaler demo

test: deps vet check-policy-pure unit fuzz-short conformance rules-test deploy-test

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

clean:
	rm -rf bin
