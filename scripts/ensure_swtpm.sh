#!/usr/bin/env bash
# Make sure Debian's software TPM and tpm2-tools are installed, for the TPM tests
# (tests/tpm_setup.py starts swtpm with its own local CA; agent/tpm.py drives it with tpm2-tools).
#
#   scripts/ensure_swtpm.sh        # exit 0: swtpm, swtpm-tools and tpm2-tools are there
#
# Idempotent and quiet: exits 0 at once when all three are installed; otherwise installs the
# packages with apt-get, which needs root and a reachable apt repository. Prints nothing on
# success; on failure prints one line saying why (and the tail of apt's output) to stderr and
# exits 1. Without them the TPM tests skip with a message.
set -euo pipefail

have_all() {
  command -v swtpm >/dev/null 2>&1 && command -v swtpm_setup >/dev/null 2>&1 &&
    command -v swtpm_localca >/dev/null 2>&1 && command -v tpm2_quote >/dev/null 2>&1
}

fail() {
  echo "ensure_swtpm: $*" >&2
  exit 1
}

if have_all; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  fail "swtpm or tpm2-tools is missing and this is not root: install swtpm swtpm-tools tpm2-tools"
fi
if ! command -v apt-get >/dev/null 2>&1; then
  fail "swtpm or tpm2-tools is missing and there is no apt-get: install them by other means"
fi

log="$(mktemp -t ensure-swtpm.XXXXXX)"
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
pkgs=(swtpm swtpm-tools tpm2-tools)

# A fresh machine may have no package lists yet: try as is, then once more after an update.
if ! apt-get install -y -q "${pkgs[@]}" >"$log" 2>&1; then
  if ! { apt-get update -q && apt-get install -y -q "${pkgs[@]}"; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    fail "apt-get could not install ${pkgs[*]} (output above)"
  fi
fi
have_all || fail "apt-get succeeded but swtpm or tpm2-tools is still not on PATH"
