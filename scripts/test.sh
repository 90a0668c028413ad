#!/usr/bin/env bash
# Set everything up, then run the whole test suite on the CPU (no downloads, no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec "${MVFA_VENV:-.venv}/bin/python" -m pytest -q "$@"
