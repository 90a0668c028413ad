#!/usr/bin/env bash
# Build the student edition: notebooks/*.ipynb -> _build/student/*.ipynb, with the solutions
# and self-check answers stripped and the auto-check cells kept (scripts/student.py).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MVFA_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || bash scripts/setup.sh
exec "$VENV/bin/python" scripts/student.py "$@"
