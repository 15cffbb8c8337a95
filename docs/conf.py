"""Sphinx configuration: MyST markdown, executed examples (myst-nb), references generated from
the code (the layout models, the click CLI, docstrings), built with -W in CI."""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXTENSIONS = Path(__file__).parent / "_ext"
sys.path.insert(0, str(EXTENSIONS))
# executed pages run in kernels (subprocesses): they find checked_shell through PYTHONPATH
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(EXTENSIONS), os.environ.get("PYTHONPATH")])
)
# `!annlayout ...` runs in a pseudo-terminal: plain wide output, no progress bars or colours
os.environ.update(COLUMNS="160", TTY_COMPATIBLE="0")

import annlayout  # noqa: E402

project = "annlayout"
author = "annlayout developers"
copyright = "2026, annlayout developers"
release = annlayout.__version__

extensions = [
    "myst_nb",  # MyST markdown; pages with code cells are executed on every build
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx_click",
    "layout_reference",  # docs/_ext: the layout file reference from the pydantic models
    "reference_check",  # docs/_ext: both references complete, or the build fails
]

exclude_patterns = ["_build", "jupyter_execute", "**/.ipynb_checkpoints"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# Every example runs on every build: a changed API breaks the build, not the reader.
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_timeout = 600
nb_execution_in_temp = True  # each page works in its own scratch directory
nb_merge_streams = True

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}

html_theme = "sphinx_book_theme"
html_title = "annlayout"
html_theme_options = {"show_toc_level": 2}
