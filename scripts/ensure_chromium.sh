#!/usr/bin/env bash
# Make sure Debian's chromium is installed, for the browser test of the HTML compliance report
# (tests/integration/test_report_html_browser.py renders the page in headless chromium).
#
#   scripts/ensure_chromium.sh        # exit 0: chromium is there (installed now or already)
#
# Idempotent and quiet: exits 0 at once when chromium is already installed; otherwise installs
# the `chromium` package with apt-get, which needs root and a reachable apt repository. Prints
# nothing on success; on failure prints one line saying why (and the tail of apt's output) to
# stderr and exits 1.
set -euo pipefail

have_chromium() {
  [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1
}

fail() {
  echo "ensure_chromium: $*" >&2
  exit 1
}

if have_chromium; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  fail "chromium is missing and this is not root: install the Debian package 'chromium'"
fi
if ! command -v apt-get >/dev/null 2>&1; then
  fail "chromium is missing and there is no apt-get: install chromium by other means"
fi

log="$(mktemp -t ensure-chromium.XXXXXX)"
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive

# A fresh machine may have no package lists yet: try as is, then once more after an update.
if ! apt-get install -y -q chromium >"$log" 2>&1; then
  if ! { apt-get update -q && apt-get install -y -q chromium; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    fail "apt-get could not install chromium (output above)"
  fi
fi
have_chromium || fail "apt-get succeeded but there is still no chromium on PATH"
