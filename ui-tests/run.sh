#!/usr/bin/env bash
# Runs the web UI's end-to-end tests: the real `atelier` binary (debug build) over temporary
# roots, driven in Debian's headless Chromium by playwright-core under node's test runner.
# Installs what it needs when missing and run as root on Debian (CI does): chromium, Node.js and
# npm, and the npm packages of package-lock.json. Honours CARGO_TARGET_DIR. Screenshots of every
# screen land in ui-tests/artifacts/.
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "ui-tests: missing ${need_apt[*]}; install them (Debian: apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
fi

if [ ! -f node_modules/playwright-core/package.json ] ||
   ! grep -q "\"version\": \"$(sed -n 's/.*"playwright-core": "\(.*\)".*/\1/p' package.json | head -1)\"" node_modules/playwright-core/package.json; then
  npm ci --no-audit --no-fund --loglevel=error
fi

(cd .. && cargo build --locked -p atelier-server --bin atelier && cargo build --locked -p atelier-engine --example write_tiny)

rm -rf artifacts
mkdir -p artifacts
node --test --test-concurrency=1 tests/
