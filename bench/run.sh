#!/usr/bin/env bash
# Builds the release binary and runs the benchmarks: `bench/run.sh [auth|content|all]`.
# Needs wrk (Debian: apt-get install wrk) and python3.
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
