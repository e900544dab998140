#!/usr/bin/env bash
# Fashion-MNIST from the Debian package dataset-fashion-mnist (apt: needs root or passwordless sudo).
# Idempotent. The logic is `lowbit data fetch fashion-mnist` (src/lowbit/demo/fetch.py; --help lists what and how big).
#   PYTHON=/path/to/python bash scripts/setup_fashion_mnist.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m lowbit.cli data fetch fashion-mnist
