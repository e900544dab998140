"""Build lowbit's API reference from its docstrings with pdoc, offline, and check it.

    python scripts/build_api_docs.py [OUT_DIR]      # default docs/api/ (git-ignored build output)

Documents `lowbit` (its `__all__`) and each public subpackage (its own `__all__`). Exits 1 when pdoc
warns, when a backticked `lowbit.…` name in a documented docstring names nothing importable, or when
a name in `lowbit.__all__` has no docstring of its own; each problem is printed on one line.
`tests/test_api_docs.py` runs `build` into a temporary folder in CI.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import sys
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# subpackages that are tools of the repository or of the CLI, not API
PRIVATE = {"lowbit.demo"}
# top-level modules whose names the public docstrings and the guides use
MODULES = ("lowbit.config", "lowbit.plan", "lowbit.progress", "lowbit.errors", "lowbit.target.cpu", "lowbit.data.stateful")
# a backticked dotted name starting with lowbit. (arguments or a trailing call may follow it)
REFERENCE = re.compile(r"`(lowbit(?:\.[A-Za-z_]\w*)+)")


def public_modules() -> list[str]:
    """`lowbit`, each subpackage not in PRIVATE, and MODULES that exist, in a stable order."""
    import lowbit

    names = ["lowbit"]
    for info in sorted(pkgutil.iter_modules(lowbit.__path__), key=lambda i: i.name):
        name = f"lowbit.{info.name}"
        if info.ispkg and not info.name.startswith("_") and name not in PRIVATE:
            names.append(name)
    # a module inside a subpackage already listed is documented with it (pdoc walks subpackages)
    names += [m for m in MODULES if importlib.util.find_spec(m) is not None
              and not any(m == n or m.startswith(n + ".") for n in names[1:])]
    return names


def build(out: Path, modules: list[str] | None = None) -> list[str]:
    """Write the HTML reference into `out`; returns pdoc's warnings, one line each."""
    import pdoc
    import pdoc.render

    modules = modules or public_modules()
    pdoc.render.configure(docformat="markdown", show_source=False, search=True,
                          footer_text=f"lowbit {importlib.import_module('lowbit').__version__}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*modules, output_directory=Path(out))
    return [f"{w.category.__name__}: {w.message}" for w in caught]


def _documented(modules: list[str]):
    """(qualified name, docstring) of every object the reference shows: the modules and, recursively,
    their members as pdoc selects them (`__all__` where a module has one)."""
    import pdoc.doc

    seen: set[str] = set()
    stack = [pdoc.doc.Module(importlib.import_module(m)) for m in modules]
    while stack:
        d = stack.pop()
        if d.fullname in seen:
            continue
        seen.add(d.fullname)
        yield d.fullname, d.docstring or ""
        if isinstance(d, (pdoc.doc.Module, pdoc.doc.Class)):
            stack.extend(m for m in d.members.values() if not m.name.startswith("_") or m.name == "__init__")


def resolves(dotted: str) -> bool:
    """True when `dotted` names a module, or an attribute reachable from the longest module prefix."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def broken_references(modules: list[str] | None = None) -> list[str]:
    """'OBJECT: `lowbit.x.y` does not resolve' for every backticked lowbit name that names nothing."""
    bad = []
    for owner, doc in _documented(modules or public_modules()):
        for name in sorted(set(REFERENCE.findall(doc))):
            if not resolves(name.rstrip(".")):
                bad.append(f"{owner}: `{name}` does not resolve to an importable object")
    return bad


def undocumented_public() -> list[str]:
    """'lowbit.NAME has no docstring' for each name in `lowbit.__all__` without one. A constant is
    documented by a string literal right after its assignment, which pdoc reads only in the module
    that assigns it (`int8` in lowbit.core.dtypes), so a re-exported constant counts as documented
    when a lowbit module binding the same object documents it."""
    import pdoc.doc

    import lowbit

    def documented(name: str, module: Any) -> bool:
        member = pdoc.doc.Module(module).members.get(name)
        return member is not None and bool(member.docstring.strip())

    missing = []
    for name in lowbit.__all__:
        obj = getattr(lowbit, name)
        owners = [m for k, m in sorted(sys.modules.items())
                  if k.startswith("lowbit.") and m is not None and getattr(m, name, None) is obj]
        if not documented(name, lowbit) and not any(documented(name, m) for m in owners):
            missing.append(f"lowbit.{name} has no docstring")
    return missing


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else REPO / "docs" / "api"
    problems = [*build(out), *broken_references(), *undocumented_public()]
    for p in problems:
        print(p, file=sys.stderr)
    print(f"API reference: {out / 'index.html'} ({len(problems)} problems)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
