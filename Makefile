# Every target sets itself up: `make test` and `make demo` work on a fresh machine with Python >= 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup test test-fast check lint format typecheck proto proto-check gpu-table gpu-table-check demo bench gpu-check wheel-check clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## The tests (README's test command; CI runs it through .ci/run). Chromium is installed on the
## way if missing (Debian, as root) for the browser test of the HTML report, and swtpm with
## tpm2-tools for the TPM tests, and promtool for the alert-rule tests.
test: $(STAMP)
	@scripts/ensure_chromium.sh || echo "note: no chromium; the HTML browser test will be skipped"
	@scripts/ensure_swtpm.sh || echo "note: no swtpm or tpm2-tools; the TPM tests will be skipped"
	@scripts/ensure_promtool.sh || echo "note: no promtool; the alert-rule cross-checks will be skipped"
	$(BIN)/python -m pytest

## Lint, types, and generated-code and generated-doc drift: what CI checks besides the tests.
check: lint typecheck proto-check gpu-table-check

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

proto: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

proto-check: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

## docs/gpu-table.md is generated from attest/compute.py's GPU table.
gpu-table: $(STAMP)
	$(BIN)/python scripts/gen_gpu_table.py

gpu-table-check: $(STAMP)
	$(BIN)/python scripts/gen_gpu_table.py --check

## The wheel: builds, installs in a fresh venv, both commands start, demo data in, no tests.
wheel-check: $(STAMP)
	PYTHON=$(BIN)/python scripts/check_wheel.sh

## The demo of a whole simulated lab (README's main command).
demo: $(STAMP)
	$(BIN)/pausewatch demo

bench: $(STAMP)
	$(BIN)/python bench/bench_envelope.py
	$(BIN)/python bench/bench_agent.py
	$(BIN)/python bench/bench_audit.py
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_long_streams.py
	$(BIN)/python bench/bench_tpm.py

## On a machine with an NVIDIA GPU, torch and nvidia-ml-py (see bench/gpu_check.sh).
gpu-check:
	bench/gpu_check.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis demo-out
