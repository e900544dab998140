"""The package's shape, as docs/design.md states it: no import cycle (through package __init__
files too), imports at module top except heavy optional dependencies, few top-level modules, a
thin composer, and one definition of SQNR."""

from __future__ import annotations

import ast
from pathlib import Path

import lowbit

SRC = Path(lowbit.__file__).parent
# optional or heavy packages: imported where used, so `import lowbit` stays light and works without
# them (rich: drawn only when progress is asked for; tomllib: Python 3.11+, config files only;
# benchmarks: the zoo table, in a checkout only)
LAZY_OK = {"torch", "torchvision", "matplotlib", "PIL", "dlib", "skimage", "sklearn", "transformers", "tokenizers",
           "pydoc_data", "threadpoolctl", "tomllib", "tomli", "rich", "benchmarks"}


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(SRC.rglob("*.py")):
        parts = list(f.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function, line) for every import, TYPE_CHECKING blocks left out."""
    found: list[tuple[str, bool, int]] = []
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                continue  # annotations only: never executed
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, inner, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([child.module] if child.module else []))
                for a in child.names:  # `from pkg import submodule` imports the submodule
                    sub = f"{base}.{a.name}"
                    found.append((sub if sub in MODULES else base, inner, child.lineno))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the lowbit modules importing it runs: the named module and every package above it
    (their __init__ runs first), except the importer's own packages."""
    graph = {}
    for name, path in MODULES.items():
        deps = set()
        for target, _, _ in _imports(name, path):
            parts = target.split(".")
            if parts[0] != "lowbit":
                continue
            deps.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        graph[name] = {d for d in deps if d in MODULES and d != name and not name.startswith(d + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycle() -> None:
    graph = _graph()
    cycles = _cycles(graph)
    detail = ["; ".join(f"{a} -> {b}" for a in c for b in sorted(graph[a] & set(c))) for c in cycles]
    assert not cycles, "import cycles (a module imports one that imports it back):\n" + "\n".join(detail)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _heavy() -> set[str]:
    """lowbit modules that import a heavy optional dependency when imported (directly or through
    their top-level lowbit imports and the packages above those)."""
    tops = {n: [t for t, inner, _ in _imports(n, p) if not inner] for n, p in MODULES.items()}
    heavy = {n for n, ts in tops.items() if any(t.split(".")[0] in LAZY_OK for t in ts)}
    grew = True
    while grew:
        grew = False
        for n, ts in tops.items():
            deps = {".".join(t.split(".")[:i]) for t in ts for i in range(2, len(t.split(".")) + 1)}
            if n not in heavy and deps & heavy:
                heavy.add(n)
                grew = True
    return heavy


def test_imports_at_module_top_except_heavy_optional_dependencies() -> None:
    heavy = _heavy()
    late = [f"{MODULES[n].relative_to(SRC.parent)}:{line} imports {t}"
            for n, p in MODULES.items() for t, inner, line in _imports(n, p)
            if inner and t.split(".")[0] not in LAZY_OK and t not in heavy]
    assert not late, "imports inside functions (move them to the top):\n" + "\n".join(late)


def test_import_lowbit_stays_light() -> None:
    import subprocess
    import sys

    code = "import sys, lowbit, lowbit.cli.commands; print(sorted({'torch', 'matplotlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_fewer_than_ten_top_level_modules() -> None:
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert len(top) < 10, top


def test_the_composer_has_no_long_function() -> None:
    tree = ast.parse((SRC / "api.py").read_text())
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80}
    assert not long, f"functions over 80 lines in api.py: {long}"


def test_sqnr_is_defined_once() -> None:
    # every dB figure goes through lowbit.core.fidelity (sqnr, sqnr_db, decibels)
    def calls_log10(path: Path) -> bool:
        return any(isinstance(n, ast.Call) and getattr(n.func, "attr", getattr(n.func, "id", None)) == "log10"
                   for n in ast.walk(ast.parse(path.read_text())))

    users = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if calls_log10(p))
    assert users == ["core/fidelity.py"], users
    from lowbit.core import sqnr, sqnr_db

    assert sqnr_db(100.0, 1.0) == 20.0 and sqnr([1.0, 2.0], [1.0, 2.0]) == float("inf")
