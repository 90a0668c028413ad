#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install mvfa-lite with its test and book tools.
# torch is pinned to the release this project is tested with; on a CUDA machine pip picks
# the CUDA build of the same release.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MVFA_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/python" -m pip install -q -e ".[test,book]"
echo "environment ready: $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
