#!/usr/bin/env bash
# Create .venv and install lmforge into it: torch pinned first (the CPU wheel on local disk),
# then the project with the requested extras. Idempotent: re-runs only when pyproject.toml or the
# extras change.  Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
VENV=.venv
TORCH_SPEC="${LMFORGE_TORCH:-torch==2.13.0}"
stamp="$VENV/.lmforge-setup-$( (cat pyproject.toml; echo "$EXTRAS $TORCH_SPEC") | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC (pinned first, so nothing pulls a CUDA build)"
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
fi
target="."
[ -n "$EXTRAS" ] && target=".[$EXTRAS]"
echo "setup: installing lmforge $target"
"$VENV/bin/python" -m pip install -q -e "$target"
rm -f "$VENV"/.lmforge-setup-*
touch "$stamp"
echo "setup: done"
