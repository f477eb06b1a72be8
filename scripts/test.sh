#!/usr/bin/env bash
# Set-up plus the whole test suite. pytest exits 5 when it collects no tests, which fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python -c 'import sys; print("testing under Python", sys.version.split()[0], "at", sys.executable)'
.venv/bin/ruff check src tests benchmarks
bash scripts/install-browser.sh || [ "${CI:-}" != "true" ]  # outside CI the browser test then skips, saying why
.venv/bin/python -m pytest -q "$@"
