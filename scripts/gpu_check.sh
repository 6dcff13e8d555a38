#!/usr/bin/env bash
# GPU check on a lent machine (its own Python 3.12 + torch; no Prefect/DVC/polars there).
#   here, once:         .venv/bin/python bench/gpu.py --prepare      (assets into .cache/gpu_check)
#   on the GPU machine: scripts/gpu_check.sh                          (carry .cache/gpu_check)
#   on a CPU:           scripts/gpu_check.sh --cpu-dry-run            (the same checks, shrunk)
# Writes bench/results/gpu.json (or gpu_cpu_dry_run.json); finishes in under 8 minutes on an H100/H200.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ "${1:-}" = "--cpu-dry-run" ] && PY=.venv/bin/python
"$PY" -c "import torch, numpy, safetensors, tiktoken; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/lmforge-inductor}
LIMIT=480                                   # the lent machine's budget: 8 minutes
[ "${1:-}" = "--cpu-dry-run" ] && LIMIT=1800  # a shared CPU is slow; the dry run checks paths, not speed
exec timeout "$LIMIT" "$PY" bench/gpu.py "$@"
