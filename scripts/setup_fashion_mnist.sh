#!/usr/bin/env bash
# Install Fashion-MNIST (60,000 + 10,000 labeled 28x28 images, MIT licence) from the Debian package
# dataset-fashion-mnist and check that lowbit can read it. Idempotent: skips apt when installed.
# Needs root (or sudo) for apt-get. See /work/shared/DATA.md.
#   PYTHON=/path/to/python bash scripts/setup_fashion_mnist.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

if ! dpkg-query -W -f='${Status}' dataset-fashion-mnist 2>/dev/null | grep -q "install ok installed"; then
    SUDO=""
    if [[ "$(id -u)" != "0" ]]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

# the folder that holds the idx files, as the package installed them
DIR="$(dirname "$(dpkg -L dataset-fashion-mnist | grep 't10k-images-idx3-ubyte.gz$' | head -n1)")"
LOWBIT_FASHION_MNIST="$DIR" "$PYTHON" - <<'PY'
from lowbit.demo.datasets import fashion_mnist as f

for split in ("train", "test"):
    x, y = f.load(split)
print(f"setup_fashion_mnist.sh: ok ({f.data_dir()}: 60000 train, {len(x)} test images)")
PY
if [[ "$DIR" != "/usr/share/datasets/fashion-mnist" ]]; then
    echo "setup_fashion_mnist.sh: the files are in $DIR; set LOWBIT_FASHION_MNIST=$DIR" >&2
fi
