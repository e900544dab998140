#!/usr/bin/env bash
# The API reference from lowbit's docstrings (pdoc, offline) into docs/api/ (or $1), checked:
# pdoc warnings, backticked `lowbit.…` names that resolve to nothing and undocumented public names
# fail the build (exit 1). Needs the test extra: pip install -e ".[test]".
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" scripts/build_api_docs.py "$@"
