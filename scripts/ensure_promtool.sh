#!/usr/bin/env bash
# Make sure Prometheus's promtool is installed, for the alert-rule tests (tests/unit/agent/
# test_alert_rules.py runs the shipped rules through `promtool test rules`, beside the tests' own
# evaluator).
#
#   scripts/ensure_promtool.sh     # exit 0: promtool is there
#
# Idempotent and quiet: exits 0 at once when promtool is on PATH; otherwise installs Debian's
# prometheus package (without its recommends: no exporters, and no service is started where
# systemd is not running) with apt-get, which needs root and a reachable apt repository. Prints
# nothing on success; on failure prints one line saying why (and the tail of apt's output) to
# stderr and exits 1. Without it the promtool tests skip with a message.
set -euo pipefail

fail() {
  echo "ensure_promtool: $*" >&2
  exit 1
}

if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  fail "promtool is missing and this is not root: install Debian's prometheus package"
fi
if ! command -v apt-get >/dev/null 2>&1; then
  fail "promtool is missing and there is no apt-get: install it by other means"
fi

log="$(mktemp -t ensure-promtool.XXXXXX)"
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
install() { apt-get install -y -q --no-install-recommends prometheus; }

# A fresh machine may have no package lists yet: try as is, then once more after an update.
if ! install >"$log" 2>&1; then
  if ! { apt-get update -q && install; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    fail "apt-get could not install prometheus (output above)"
  fi
fi
command -v promtool >/dev/null 2>&1 || fail "apt-get succeeded but promtool is still not on PATH"
