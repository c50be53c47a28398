#!/usr/bin/env bash
# Runs every test of the project: unit tests of each crate, the integration suite (a real
# server on 127.0.0.1 over temporary roots and real SQLite files, plus the CLI as real
# processes) and the web UI's end-to-end tests in a headless browser. Installs what the tests
# need when run as root on Debian (CI does).
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
# The socket.io client crate of the integration suite (rust_socketio) builds native-tls on OpenSSL.
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || need_apt+=(libssl-dev)
if [ ${#need_apt[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

cargo test --workspace --locked

# The web UI's end-to-end tests in headless Chromium (installs chromium, Node.js and its npm
# packages when missing; see ui-tests/run.sh).
ui-tests/run.sh
