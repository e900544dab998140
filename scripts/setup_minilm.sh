#!/usr/bin/env bash
# all-MiniLM-L6-v2's weights and tokenizer, and transformers (pip).
# Idempotent. The logic is `lowbit data fetch minilm` (src/lowbit/demo/fetch.py; --help lists what and how big).
#   PYTHON=/path/to/python bash scripts/setup_minilm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m lowbit.cli data fetch minilm
