#!/usr/bin/env bash
# Create .venv and install lmforge into it: torch pinned first (the CPU wheel on local disk),
# then the project with the requested extras. Idempotent: re-runs only when pyproject.toml or the
# extras change.  Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh test
set -eo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
VENV=.venv
TORCH_SPEC="${LMFORGE_TORCH:-torch==2.13.0}"
hash=$( (cat pyproject.toml; echo "$TORCH_SPEC") | sha256sum | cut -c1-16)
stamp="$VENV/.lmforge-setup-$hash-${EXTRAS:-base}"
if [ -f "$stamp" ]; then exit 0; fi
# any extras include the base install
if [ -z "$EXTRAS" ] && ls "$VENV"/.lmforge-setup-"$hash"-* >/dev/null 2>&1; then exit 0; fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel 2>&1 | quiet
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC (pinned first, so nothing pulls a CUDA build)"
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC" 2>&1 | quiet
fi
target="."
[ -n "$EXTRAS" ] && target=".[$EXTRAS]"
echo "setup: installing lmforge $target"
"$VENV/bin/python" -m pip install -q -e "$target" 2>&1 | quiet
"$VENV/bin/python" -c "import torch, prefect, polars, lmdata, flows" # fail here, not later
find "$VENV" -maxdepth 1 -name ".lmforge-setup-*" ! -name ".lmforge-setup-$hash-*" -delete
touch "$stamp"
echo "setup: done"
