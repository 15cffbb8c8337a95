"""annlayout: declarative storage layouts for AnnData stores.

import annlayout
layout = annlayout.load_layout("ml-minibatch")
plan = annlayout.plan(layout, "data.h5ad")
annlayout.write(adata, "data.zarr", layout)
ad.experimental.write_dispatched(group, "/", adata, callback=layout.callback())

The public names are imported on first use (PEP 562), so ``import annlayout`` and the
``annlayout`` command start without numpy, zarr, anndata or pydantic.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import TYPE_CHECKING, Any

from annlayout.defaults import VERIFY_MEMORY

if TYPE_CHECKING:
    from annlayout.appending import append
    from annlayout.concatenate import concat
    from annlayout.errors import AnnlayoutError, ApplyError, LayoutError, PlanError
    from annlayout.layout_files import json_schema, load_layout
    from annlayout.layout_models import Layout
    from annlayout.plan import Plan, make_plan
    from annlayout.reader import Dataset, open
    from annlayout.rewrite.in_memory import WriteResult, write
    from annlayout.rewrite.stream import ApplyResult, apply
    from annlayout.shipped import shipped_layouts
    from annlayout.survey_models import Survey

    __version__: str

#: Where each public name lives; imported when first asked for.
_LAZY = {
    "AnnlayoutError": "annlayout.errors",
    "ApplyError": "annlayout.errors",
    "LayoutError": "annlayout.errors",
    "PlanError": "annlayout.errors",
    "Layout": "annlayout.layout_models",
    "json_schema": "annlayout.layout_files",
    "load_layout": "annlayout.layout_files",
    "shipped_layouts": "annlayout.shipped",
    "Plan": "annlayout.plan",
    "make_plan": "annlayout.plan",
    "Dataset": "annlayout.reader",
    "open": "annlayout.reader",
    "WriteResult": "annlayout.rewrite.in_memory",
    "write": "annlayout.rewrite.in_memory",
    "ApplyResult": "annlayout.rewrite.stream",
    "apply": "annlayout.rewrite.stream",
    "Survey": "annlayout.survey_models",
    "store_backend": "annlayout.remote",
    "concat": "annlayout.concatenate",
    "append": "annlayout.appending",
}

#: Submodules used as namespaces (``annlayout.loader.batches``), imported when first named.
_SUBMODULES = {"loader"}


def __getattr__(name: str) -> Any:
    value: Any
    if name == "__version__":
        from annlayout.version import package_version

        value = package_version()
    elif name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:  # ``annlayout.loader.batches(...)`` without importing it first
        value = import_module(f"annlayout.{name}")
    else:
        raise AttributeError(f"module 'annlayout' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def survey(source) -> Survey:
    """Survey a store path or an in-memory AnnData (metadata only)."""
    from annlayout.survey import survey_adata, survey_store

    if isinstance(source, str | bytes) or hasattr(source, "__fspath__"):
        return survey_store(source)
    return survey_adata(source)


def plan(layout, source) -> Plan:
    """Plan ``layout`` (a name, path or Layout) against a store path or an in-memory AnnData."""
    from annlayout.layout_files import load_layout
    from annlayout.plan import make_plan

    return make_plan(load_layout(layout), survey(source))


def verify(source, rewritten, *, memory: int | str = VERIFY_MEMORY) -> list[str]:
    """Elements that differ between two AnnData stores (one line each); empty when equal.

    ``memory`` (bytes, or a size such as ``"512MiB"``) bounds the blocks compared at once."""
    from annlayout.rewrite.verify import verify_stores

    return verify_stores(source, rewritten, memory=memory)


class _Package(types.ModuleType):
    """``annlayout.plan`` and ``annlayout.survey`` are functions, and also submodules.

    Importing a submodule sets it as an attribute of its package; done lazily, after the
    functions are defined, that would replace them. The functions stay.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("plan", "survey") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "AnnlayoutError",
    "ApplyError",
    "ApplyResult",
    "Dataset",
    "Layout",
    "LayoutError",
    "Plan",
    "PlanError",
    "Survey",
    "WriteResult",
    "__version__",
    "append",
    "apply",
    "concat",
    "json_schema",
    "load_layout",
    "make_plan",
    "open",
    "plan",
    "shipped_layouts",
    "survey",
    "verify",
    "write",
]
