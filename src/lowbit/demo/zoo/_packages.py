"""Locate the offline data packages installed by ``lowbit data fetch demo`` without importing them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lowbit.errors import ModelError

SETUP_HINT = "Run `lowbit data fetch demo` to install lowbit's offline models and photos."


def package_dir(name: str, pip_name: str) -> Path:
    """Folder of installed package ``name`` (found, not imported), or ModelError with the setup hint.

    >>> package_dir("foolbox", "foolbox==3.3.4").name
    'foolbox'
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"The package '{pip_name}' is not installed. {SETUP_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))
