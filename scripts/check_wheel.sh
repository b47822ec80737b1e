#!/usr/bin/env bash
# Build the wheel, install it in a fresh virtual environment, and check what a user gets from it:
# both commands start, the demo's data is inside, the tests are not. Run by .ci/run (make wheel-check).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" .
wheel=$(ls "$work"/dist/pausewatch-*.whl)
echo "built $(basename "$wheel")"

"$PYTHON" - "$wheel" <<'PY'
import sys
import zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
required = [
    "verifier/demo_data/helios_vchbv_excerpt.csv",
    "verifier/demo_data/LICENSE-helios.txt",
    "verifier/audit/report_html.py",
    "verifier/server/server.py",
    "pausewatch/v1/attestation_pb2.py",
    "attest/envelope.py",
    "agent/cli.py",
]
missing = [name for name in required if name not in names]
tests = [name for name in names if name.startswith("tests/") or "/tests/" in name]
if missing:
    sys.exit(f"the wheel lacks {', '.join(missing)}")
if tests:
    sys.exit(f"the wheel carries test files: {', '.join(tests[:5])}")
print(f"wheel contents ok ({len(names)} files, demo data in, no tests)")
PY

"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet --constraint constraints.txt "$wheel"
# Run from an empty folder so that nothing of the checkout can be imported by accident.
cd "$work"
venv/bin/pausewatch --help >/dev/null
venv/bin/pausewatch-agent --help >/dev/null
venv/bin/python -c "import importlib.resources as r; assert r.files('verifier').joinpath('demo_data', 'helios_vchbv_excerpt.csv').is_file()"
venv/bin/pausewatch keygen --help >/dev/null
echo "wheel installs in a fresh venv; pausewatch and pausewatch-agent start"
