"""The example runner itself (``conftest.py`` at the repository root).

The examples in docstrings, README.md and docs/*.md are collected as tests by that
configuration. Here: it fails an example whose printed output is wrong, and no Python block
escapes it (a block fenced as ``py`` or ``pycon`` would not run) or is skipped without the
one documented mark.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from sybil.example import SybilFailure

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Blocks that cannot run in the test environment (a GPU, a package outside the test extra,
# Python 3.12 only) are marked <!-- skip: next -->; keep such marks few.
MAX_SKIP_MARKS = 5


def _runner():
    spec = importlib.util.spec_from_file_location("_examples_conftest", ROOT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _evaluate(sybil, path: Path) -> None:
    for example in sybil.parse(path):
        example.evaluate()


@pytest.mark.parametrize("printed, passes", [("2", True), ("3", False)])
def test_markdown_doctest_output_is_compared(tmp_path, printed, passes):
    doc = tmp_path / "page.md"
    doc.write_text(f"Text.\n\n```python\n>>> 1 + 1\n{printed}\n```\n")
    runner = _runner()
    if passes:
        _evaluate(runner.markdown_examples, doc)
    else:
        with pytest.raises(SybilFailure, match="Expected"):
            _evaluate(runner.markdown_examples, doc)


def test_markdown_block_errors_fail_and_skip_mark_skips(tmp_path):
    runner = _runner()
    doc = tmp_path / "page.md"
    doc.write_text("```python\nraise RuntimeError('ran')\n```\n")
    with pytest.raises(RuntimeError, match="ran"):
        _evaluate(runner.markdown_examples, doc)
    doc.write_text("<!-- skip: next -->\n```python\nraise RuntimeError('ran')\n```\n")
    _evaluate(runner.markdown_examples, doc)  # skipped: does not raise


@pytest.mark.parametrize("printed, passes", [("4", True), ("5", False)])
def test_docstring_output_is_compared(tmp_path, monkeypatch, printed, passes):
    module = tmp_path / "example_module.py"
    module.write_text(f'def f():\n    """Doubles.\n\n    >>> 2 * 2\n    {printed}\n    """\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    runner = _runner()
    if passes:
        _evaluate(runner.docstring_examples, module)
    else:
        with pytest.raises(SybilFailure, match="Expected"):
            _evaluate(runner.docstring_examples, module)


def _opening_fences(text: str):
    """(line number, language) of every fenced code block's opening line."""
    inside = None  # the closing fence we wait for
    for number, line in enumerate(text.splitlines(), 1):
        match = re.match(r"\s*(`{3,}|~{3,})[ \t]*(.*)$", line)
        if not match:
            continue
        if inside is None:
            inside = match.group(1)
            info = match.group(2).split()
            language = info[0] if info else ""
            if language.strip("{}") in ("code-block", "code", "sourcecode"):
                language = info[1] if len(info) > 1 else ""
            yield number, language.lower()
        elif match.group(1).startswith(inside) and not match.group(2).strip():
            inside = None


def test_every_python_block_is_fenced_as_python():
    # Sybil runs blocks whose language is exactly "python"; anything else is only shown.
    python_like = {"py", "pycon", "python3", "ipython", "ipython3", "pytb"}
    wrong = [f"{path.relative_to(ROOT)}:{line}: {language}"
             for path in DOCUMENTS
             for line, language in _opening_fences(path.read_text(encoding="utf-8"))
             if language in python_like]
    assert not wrong, "fence these as python so they run:\n" + "\n".join(wrong)


def test_skip_marks_are_few_and_spelled_one_way():
    marks = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"<!--\s*skip\b[^>]*-->|^%\s*skip\b.*$", text, re.M):
            line = text[:match.start()].count("\n") + 1
            marks.append((f"{path.relative_to(ROOT)}:{line}", match.group(0)))
    odd = [m for m in marks if m[1] != "<!-- skip: next -->"]
    assert not odd, f"use exactly <!-- skip: next -->: {odd}"
    assert len(marks) <= MAX_SKIP_MARKS, f"too many skipped examples: {marks}"
