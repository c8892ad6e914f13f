#!/usr/bin/env bash
# The one list of what building, running and testing authstamp needs beyond
# a Rust toolchain. `make run`, `make test` and .ci/run all call it.
#
#   scripts/install-deps.sh run    make run: Python 3 with venv (Envoy's wheel), curl
#   scripts/install-deps.sh test   make test: the above, plus docker-compose, openssl,
#                                  PostgreSQL, Chromium, promtool, Python requests, Node
#   scripts/install-deps.sh ci     .ci/run: the above, plus wrk (make bench-quick)
#
# Missing Debian packages are installed when this runs as root with apt-get;
# otherwise it stops at once and prints the one command that installs them.
set -euo pipefail

profile=${1:-test}
case "$profile" in
  run | test | ci) ;;
  *) echo "usage: $0 run|test|ci" >&2; exit 2 ;;
esac

missing=()
need() { # need PACKAGE CHECK...: the package when the check fails
  local package=$1; shift
  "$@" >/dev/null 2>&1 || missing+=("$package")
}
has() { command -v "$1" >/dev/null; }
has_initdb() { has initdb || ls /usr/lib/postgresql/*/bin/initdb; }
has_chromium() { [ -n "${CHROMIUM_BIN:-}" ] && [ -x "$CHROMIUM_BIN" ] || [ -x /usr/bin/chromium ]; }
has_venv() { python3 -c 'import ensurepip, venv'; }
has_requests() { python3 -c 'import requests'; }
has_node_fetch() { node -e 'if (typeof fetch !== "function") process.exit(1)'; }

# Rust comes from rustup, not apt: say so and stop.
if ! has cargo || ! has rustup; then
  echo "install-deps: Rust is missing; install it with:" >&2
  echo "  curl --proto '=https' -sSf https://sh.rustup.rs | sh -s -- -y" >&2
  exit 1
fi

need python3 has python3
need python3-venv has_venv
need curl has curl
if [ "$profile" != run ]; then
  # docker-compose validates docker-compose.yml (no Docker engine needed);
  # openssl makes the TLS test's CA; the tests start their own PostgreSQL;
  # headless Chromium runs the connect page test; promtool tests the alert rules.
  need docker-compose has docker-compose
  need openssl has openssl
  need postgresql has_initdb
  need chromium has_chromium
  need chromium-driver has chromedriver
  need prometheus has promtool
  # The client examples of docs/examples run with Python requests and Node's fetch.
  need python3-requests has_requests
  need nodejs has_node_fetch
fi
if [ "$profile" = ci ]; then
  # wrk loads Envoy in the filter benchmark (make bench-quick).
  need wrk has wrk
fi

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && has apt-get >/dev/null; then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "install-deps: missing ${missing[*]}; install with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

# The wasm target, and rustfmt and clippy for make lint / make check.
rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
if [ "$profile" != run ]; then
  for component in rustfmt clippy; do
    rustup component list --installed | grep -q "^$component" ||
      rustup component add "$component" >/dev/null 2>&1 ||
      echo "install-deps: could not add the rustup component $component (make lint needs it)" >&2
  done
fi
echo "install-deps ($profile): everything present"
