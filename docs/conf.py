"""Sphinx configuration of the spikefuse documentation.

Build (README, "Quick start"): ``pip install -e ".[docs]"`` then
``sphinx-build -W --keep-going docs docs/_build/html``. ``-W`` turns every warning into an
error: a broken cross-reference (``nitpicky``), a public name without a docstring, an
included file that is gone, a Markdown heading out of order. ``.ci/check_docs_offline.py``
then checks that the built pages load nothing from the network.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the docs need no accelerator
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext"))

from spikefuse_docs import EXTERNAL

import spikefuse

project = "spikefuse"
author = "spikefuse developers"
copyright = "spikefuse developers"
release = version = spikefuse.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static: formulas render with no network
    "spikefuse_docs",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]
root_doc = "index"

# Every reference must resolve, except to the external packages (no intersphinx: CI has no
# network for their inventories).
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", EXTERNAL)]

# Markdown: $...$ maths, ::: fences, heading anchors for in-page links.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# API reference: Google-style docstrings, members in source order, hints in the signature.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, so dataclass fields are not listed twice

html_theme = "furo"
html_title = f"spikefuse {release}"
html_static_path: list[str] = []
