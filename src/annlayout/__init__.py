"""annlayout: declarative storage layouts for AnnData stores.

import annlayout
layout = annlayout.load_layout("ml-minibatch")
plan = annlayout.plan(layout, "data.h5ad")
annlayout.write(adata, "data.zarr", layout)
ad.experimental.write_dispatched(group, "/", adata, callback=annlayout.layout_callback(layout))

The public names are imported on first use (PEP 562), so ``import annlayout`` and the
``annlayout`` command start without numpy, zarr, anndata or pydantic.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import TYPE_CHECKING, Any

from annlayout.base.defaults import VERIFY_MEMORY

if TYPE_CHECKING:
    from annlayout.apply.in_memory import WriteResult, write
    from annlayout.apply.stream import ApplyResult, apply
    from annlayout.base.errors import AnnlayoutError, ApplyError, LayoutError, PlanError
    from annlayout.base.options import RunOptions
    from annlayout.combine.append import append
    from annlayout.combine.concat import concat
    from annlayout.layout.files import json_schema, load_layout
    from annlayout.layout.models import Layout
    from annlayout.layout.shipped import shipped_layouts
    from annlayout.planning.plan import Plan, make_plan
    from annlayout.planning.survey_models import Survey
    from annlayout.reading.reader import Dataset, open
    from annlayout.write.callback import layout_callback

    __version__: str

#: Where each public name lives; imported when first asked for.
_LAZY = {
    "AnnlayoutError": "annlayout.base.errors",
    "ApplyError": "annlayout.base.errors",
    "LayoutError": "annlayout.base.errors",
    "PlanError": "annlayout.base.errors",
    "RunOptions": "annlayout.base.options",
    "Layout": "annlayout.layout.models",
    "layout_callback": "annlayout.write.callback",
    "json_schema": "annlayout.layout.files",
    "load_layout": "annlayout.layout.files",
    "shipped_layouts": "annlayout.layout.shipped",
    "Plan": "annlayout.planning.plan",
    "make_plan": "annlayout.planning.plan",
    "Dataset": "annlayout.reading.reader",
    "open": "annlayout.reading.reader",
    "WriteResult": "annlayout.apply.in_memory",
    "write": "annlayout.apply.in_memory",
    "ApplyResult": "annlayout.apply.stream",
    "apply": "annlayout.apply.stream",
    "Survey": "annlayout.planning.survey_models",
    "store_backend": "annlayout.storage.remote",
    "concat": "annlayout.combine.concat",
    "append": "annlayout.combine.append",
}

#: Submodules used as namespaces (``annlayout.loader.batches``), imported when first named.
_SUBMODULES = {"loader": "annlayout.reading.loader"}


def __getattr__(name: str) -> Any:
    value: Any
    if name == "__version__":
        from annlayout.base.version import package_version

        value = package_version()
    elif name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:  # ``annlayout.loader.batches(...)`` without importing it first
        value = import_module(_SUBMODULES[name])
    else:
        raise AttributeError(f"module 'annlayout' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def survey(source) -> Survey:
    """Survey a store path or an in-memory AnnData (metadata only)."""
    from annlayout.planning.survey import survey_adata, survey_store

    if isinstance(source, str | bytes) or hasattr(source, "__fspath__"):
        return survey_store(source)
    return survey_adata(source)


def plan(layout, source) -> Plan:
    """Plan ``layout`` (a name, path or Layout) against a store path or an in-memory AnnData."""
    from annlayout.layout.files import load_layout
    from annlayout.planning.plan import make_plan

    return make_plan(load_layout(layout), survey(source))


def verify(
    source, rewritten, *, options: RunOptions | None = None, memory: int | str | None = None
) -> list[str]:
    """Elements that differ between two AnnData stores (one line each); empty when equal.

    ``memory`` (bytes, or a size such as ``"512MiB"``; default 512MiB) bounds the blocks
    compared at once; ``options`` (:class:`RunOptions`): its ``memory`` and ``store_backend``,
    ``memory=`` over them."""
    from annlayout.base.options import RunOptions
    from annlayout.storage.remote import store_backend
    from annlayout.verify.compare import verify_stores

    if options is None and memory is None:
        memory = VERIFY_MEMORY
    options = RunOptions.merged(options, memory=memory)
    with store_backend(options.store_backend):
        return verify_stores(source, rewritten, memory=options.budget)


class _Package(types.ModuleType):
    """``annlayout.apply``, ``annlayout.verify`` and ``annlayout.write`` are functions, and also
    subpackages (the layers of docs/architecture.md).

    Importing a subpackage sets it as an attribute of its package; done lazily, after the
    functions are defined, that would replace them. The functions stay.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("apply", "verify", "write") and isinstance(value, types.ModuleType):
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
    "RunOptions",
    "Survey",
    "WriteResult",
    "__version__",
    "append",
    "apply",
    "concat",
    "json_schema",
    "layout_callback",
    "load_layout",
    "make_plan",
    "open",
    "plan",
    "shipped_layouts",
    "survey",
    "verify",
    "write",
]
