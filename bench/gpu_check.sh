#!/usr/bin/env bash
# GPU check, one command, under 5 minutes: the agent's NVML sampler watches a bf16 matmul loop of
# known FLOP count; prints the GPUs, the metrics they support, the windows' upper bound and
# central estimate against the true FLOP count, the energy read, and the agent's CPU per sample.
#
#   bench/gpu_check.sh [--gpu 0] [--seconds 20] [--window-s 5] [--interval-ms 1000]
#   PYTHON=/opt/conda/bin/python bench/gpu_check.sh
#
# Runs from the repository root with PYTHONPATH=.:protos (no install needed). Needs python3 >= 3.10
# with torch (CUDA) and nvidia-ml-py; cryptography and protobuf >= 7.35 for the full path (else
# it falls back to the sampler and attest.compute and says so). Exit 0: upper bound >= true
# FLOP count; 1: it is not; 2: the check could not run.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch, pynvml' 2>/dev/null; then
    PY=.venv/bin/python
  else
    PY=python3
  fi
fi

if ! "$PY" - <<'PYCHECK'
import importlib, sys
problems = []
if sys.version_info < (3, 10):
    problems.append(f"python {sys.version.split()[0]} (need >= 3.10)")
for module, package in (("pynvml", "nvidia-ml-py"), ("torch", "torch")):
    try:
        importlib.import_module(module)
    except Exception as exc:  # report every missing piece at once
        problems.append(f"{package} ({type(exc).__name__}: {exc})")
if problems:
    print("gpu check cannot run: " + "; ".join(problems), file=sys.stderr)
    sys.exit(2)
import torch
if not torch.cuda.is_available():
    print("gpu check cannot run: torch sees no CUDA device", file=sys.stderr)
    sys.exit(2)
PYCHECK
then
  exit 2
fi

export PYTHONPATH=".:protos${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --kill-after=10 290 "$PY" bench/gpu_check.py --python "$PY" "$@"
