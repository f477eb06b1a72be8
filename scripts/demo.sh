#!/usr/bin/env bash
# Set-up plus the main job: synthetic scenes → features → both training stages → test table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/aladin demo "$@"
