#!/usr/bin/env bash
# Install headless Chromium from the Debian package, for the HTML report's layout test
# (tests/test_report_chromium.py: screenshots at 1280 px, no horizontal overflow). Idempotent: skips
# apt when a chromium binary is on PATH. Needs root (or sudo) for apt-get.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    echo "setup_chromium.sh: ok ($(command -v chromium || command -v chromium-browser))"
    exit 0
fi
SUDO=""
if [[ "$(id -u)" != "0" ]]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
echo "setup_chromium.sh: ok ($(command -v chromium))"
