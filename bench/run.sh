#!/usr/bin/env bash
# Builds the release binary and runs the benchmarks: `bench/run.sh [auth|content|queue|all]`.
# Needs wrk (Debian: apt-get install wrk) and python3; `queue` also installs the `websockets`
# package from PyPI into bench/.venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
  else
    echo "wrk is needed: apt-get install wrk" >&2
    exit 1
  fi
fi
cargo build --release --bin atelier
export ATELIER_BIN="${ATELIER_BIN:-${CARGO_TARGET_DIR:-target}/release/atelier}"
case "${1:-all}" in
  auth|all)
    echo "== Atelier auth benchmark ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)) =="
    python3 bench/auth_bench.py ;;
esac
case "${1:-all}" in
  content|all)
    echo "== Atelier content benchmark ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)) =="
    python3 bench/content_bench.py ;;
esac
case "${1:-all}" in
  queue|all)
    echo "== Atelier queue benchmark ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)) =="
    if ! bench/.venv/bin/python -c 'import websockets' >/dev/null 2>&1; then
      python3 -m venv bench/.venv
      bench/.venv/bin/pip install -q websockets
    fi
    # Dequeue latency against the store directly (history sizes: BENCH_HISTORY, space-separated).
    # shellcheck disable=SC2086
    cargo run -q --release -p atelier-store --example dequeue_bench -- 500 ${BENCH_HISTORY:-0 1000 10000 100000}
    bench/.venv/bin/python bench/queue_bench.py ;;
esac
