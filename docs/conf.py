"""Sphinx configuration: MyST Markdown pages, API reference from docstrings.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``
(no network needed).
"""

from __future__ import annotations

import flask_chest_otel

project = "flask_chest_otel"
author = "flask_chest_otel contributors"
copyright = "flask_chest_otel contributors"
release = flask_chest_otel.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Links such as [Throughput](#throughput) point at headings.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "alabaster"
html_title = "flask_chest_otel"
