#!/usr/bin/env bash
# Chromium for the browser test (Playwright drives the system browser, so nothing is downloaded by Playwright).
# A no-op when `chromium` is already on PATH; otherwise installs Debian's package with apt (needs root).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: no chromium on PATH and no apt-get; install Chromium yourself" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
