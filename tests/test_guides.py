"""The user guides (docs/guide/*.md) stay in step with the CLI: every flag a `lowbit ...` command in
a ```bash block uses appears in that subcommand's --help, every preset and metric it names exists,
and every ```python block parses. Fast: one --help per subcommand."""

from __future__ import annotations

import ast
import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide"
GUIDES = sorted(GUIDE.glob("*.md"))
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(lang: str) -> list[tuple[str, str]]:
    return [(g.name, m.group(2)) for g in GUIDES for m in BLOCK.finditer(g.read_text()) if m.group(1) == lang]


def lowbit_commands() -> list[tuple[str, list[str]]]:
    """(guide, argv after `lowbit`) for each lowbit command line; backslash continuations joined,
    comments dropped, environment assignments and a path before `lowbit` skipped."""
    found = []
    for guide, text in blocks("bash"):
        for line in text.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
                words = words[1:]
            if words and Path(words[0]).name == "lowbit":
                found.append((guide, words[1:]))
    return found


@functools.lru_cache(maxsize=None)
def help_text(sub: str) -> str:
    argv = [sys.executable, "-m", "lowbit.cli", *([sub] if sub else []), "--help"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, f"lowbit {sub} --help failed: {done.stderr}"
    return done.stdout


def flags_of(argv: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in argv if re.match(r"--?[A-Za-z]", w)]


def test_every_guide_exists_and_is_short():
    names = {g.name for g in GUIDES}
    assert {"README.md", "classifier.md", "detector.md", "ocr.md", "speech.md", "embeddings.md",
            "llm-weights.md"} <= names
    for g in GUIDES:
        assert len(g.read_text().splitlines()) <= 130, f"{g.name} is over ~120 lines"
    index = (GUIDE / "README.md").read_text()
    for name in names - {"README.md"}:
        assert f"({name})" in index, f"docs/guide/README.md does not link {name}"


def test_each_task_guide_has_a_command_and_a_snippet():
    for g in GUIDES:
        if g.name == "README.md":
            continue
        text = g.read_text()
        assert re.search(r"^```bash\n(.*\n)*?\s*lowbit ", text, re.M), f"{g.name}: no lowbit command"
        assert "```python\n" in text, f"{g.name}: no Python snippet"


def test_guide_commands_use_only_existing_flags():
    commands = lowbit_commands()
    assert len(commands) >= 12
    for guide, argv in commands:
        assert argv, f"{guide}: a bare `lowbit`"
        top = []
        while argv and argv[0].startswith("-"):  # global flags before the subcommand
            top.append(argv.pop(0))
        sub = argv[0]
        assert re.search(rf"^\s+{re.escape(sub)}\s", help_text(""), re.M), f"{guide}: `lowbit {sub}` is not a subcommand"
        for flag in flags_of(top):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text("")), f"{guide}: lowbit {flag}"
        text = help_text(sub)
        for flag in flags_of(argv[1:]):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), \
                f"{guide}: `lowbit {sub} {flag}` is not in `lowbit {sub} --help`"


def test_guide_presets_and_metrics_exist():
    from lowbit.presets import PRESETS
    from lowbit.metrics import METRICS

    import lowbit  # noqa: F401  (registers every metric)

    for guide, argv in lowbit_commands():
        for i, w in enumerate(argv[:-1]):
            value = argv[i + 1]
            if w in ("--preset", "--precision"):
                assert value in PRESETS, f"{guide}: unknown preset {value}"
            if w == "--metric":
                assert value.split(":", 1)[0] in METRICS, f"{guide}: unknown metric {value}"


@pytest.mark.parametrize("guide,code", blocks("python"), ids=lambda v: v if isinstance(v, str) and v.endswith(".md") else "")
def test_python_snippets_parse(guide, code):
    ast.parse(code, filename=guide)
