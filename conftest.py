"""Runs the examples users read: ``>>>`` docstrings in ``spikefuse/`` and every ``python`` code
block in ``README.md`` and ``docs/*.md`` (pytest collects them through ``testpaths``).

Markdown: a fenced block in the language ``python`` runs as a script, or as a doctest when it
starts with ``>>>`` (then its printed output is compared). Blocks of one file share one
namespace, top to bottom. ``<!-- skip: next -->`` on the line before a block skips it: only
for a block that needs a GPU, a package outside the ``test`` extra, or Python 3.12.

Docstrings: every ``>>>`` example in a module's docstrings runs in that module's namespace
(like ``pytest --doctest-modules``); ``# doctest: +SKIP`` skips one line.

A document may not leave the spikefuse backend changed (examples use ``use_backend``, which
is scoped, rather than ``set_backend``): the teardown checks it, so one example cannot change
what later tests run.
"""

from __future__ import annotations

import doctest
from typing import Any

from sybil import Sybil
from sybil.parsers.myst import PythonCodeBlockParser, SkipParser
from sybil.parsers.rest import DocTestParser

OPTIONFLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def _setup(namespace: dict[str, Any]) -> None:
    import spikefuse

    namespace["__spikefuse_backend_before__"] = spikefuse.get_backend()


def _teardown(namespace: dict[str, Any]) -> None:
    import spikefuse

    before = namespace["__spikefuse_backend_before__"]
    after = spikefuse.get_backend()
    if after != before:
        raise AssertionError(
            f"an example changed the spikefuse backend from {before!r} to {after!r} and left "
            "it so; use `with spikefuse.use_backend(...):` in examples"
        )


markdown_examples = Sybil(
    parsers=[PythonCodeBlockParser(doctest_optionflags=OPTIONFLAGS), SkipParser()],
    patterns=["README.md", "docs/*.md"],
    excludes=["docs/_build/*"],
    setup=_setup,
    teardown=_teardown,
    name="markdown",
)

docstring_examples = Sybil(
    parsers=[DocTestParser(optionflags=OPTIONFLAGS)],
    path="spikefuse",
    patterns=["*.py"],
    setup=_setup,
    teardown=_teardown,
    name="docstrings",
)

pytest_collect_file = (markdown_examples + docstring_examples).pytest()
