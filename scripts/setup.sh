#!/usr/bin/env bash
# Creates .venv and installs aladin with everything the tests need, CPU torch pinned by constraints-cpu.txt
# (without the pin, pip would resolve a multi-GB CUDA build of torch through the text-model package).
set -euo pipefail
cd "$(dirname "$0")/.."
# the oldest Python pyproject.toml claims, when installed, so that CI tests the floor (tests/test_packaging.py)
PYTHON="${PYTHON:-$(command -v python3.11 || echo python3)}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints-cpu.txt -e ".[dev]"
