# Thin entry points into e2e/scripts/ (see lib.sh for the shared settings:
# TALLY_CACHE, CARGO_TARGET_DIR, pinned server versions). Where the work is more
# than installing and building, the scripts run Rust: `make dev` runs tally-dev
# (e2e/src/dev.rs, on the e2e harness), `make bench` runs tally-bench (bench/).
# Pass extra arguments with ARGS, e.g. `make dev ARGS=--reset`,
# `make test ARGS="-p tally-processor"`.

SHELL := bash
SCRIPTS := e2e/scripts
CARGO := $(SCRIPTS)/cargo.sh
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help dev test fuzz bench build crds fmt fmt-check lint servers

help: ## Show this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

dev: ## Run NATS, ClickHouse, processor, collector and query service locally until Ctrl-C (ARGS=--help: options)
	$(SCRIPTS)/dev.sh $(ARGS)

test: ## Install the test servers, then cargo test --workspace --locked
	$(SCRIPTS)/test.sh $(ARGS)

fuzz: ## Fuzz the collector's request parsing (ARGS=seconds, default 60; needs nightly)
	$(SCRIPTS)/fuzz.sh $(ARGS)

bench: ## Measure on this machine: throughput, latency, lag, reads, overload (ARGS=--quick: smoke run; bench/)
	$(SCRIPTS)/bench.sh $(ARGS)

build: ## cargo build --workspace --locked
	$(CARGO) build --workspace --locked $(ARGS)

crds: ## Regenerate the CRD YAML in crds/ from the Rust types
	$(CARGO) run --locked -p tally-crds --bin crdgen $(ARGS)

fmt: ## cargo fmt --all
	$(CARGO) fmt --all

fmt-check: ## cargo fmt --all --check
	$(CARGO) fmt --all --check

lint: ## cargo clippy on everything, warnings are errors
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

servers: ## Install the pinned nats-server and ClickHouse into the cache only
	$(SCRIPTS)/install-servers.sh
