"""Where lowbit's offline face data lives (face-api's weights and group photos, face_recognition's
portraits, dlib's models): one folder in the environment, filled by ``lowbit data fetch doorbell``.
Kept free of torch so that setup and the photo loaders can name it."""

from __future__ import annotations

import sys
from pathlib import Path

FACES_SETUP_HINT = "Run `lowbit data fetch doorbell` to install lowbit's offline face data."


def faces_data_dir() -> Path:
    """``<venv>/share/lowbit/faces``, where ``lowbit data fetch doorbell`` puts the face data."""
    return Path(sys.prefix) / "share" / "lowbit" / "faces"
