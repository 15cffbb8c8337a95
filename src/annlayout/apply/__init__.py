"""Applying a layout: one store (or an in-memory AnnData) to one store.

The names below are imported on first use (PEP 562): importing one module of this package
(``annlayout.apply.verbatim``) runs this file first, and that must not bring the streaming
rewriter, zarr, anndata and dask with it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from annlayout.apply.in_memory import WriteResult, write
    from annlayout.apply.stream import DEFAULT_MEMORY, ApplyResult, apply
    from annlayout.storage.commit import TMP_SUFFIX, ApplyError
    from annlayout.storage.stores import provenance
    from annlayout.verify.compare import verify_stores

_LAZY = {
    "TMP_SUFFIX": "annlayout.storage.commit",
    "ApplyError": "annlayout.storage.commit",
    "WriteResult": "annlayout.apply.in_memory",
    "provenance": "annlayout.storage.stores",
    "write": "annlayout.apply.in_memory",
    "DEFAULT_MEMORY": "annlayout.apply.stream",
    "ApplyResult": "annlayout.apply.stream",
    "apply": "annlayout.apply.stream",
    "verify_stores": "annlayout.verify.compare",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'annlayout.apply' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "DEFAULT_MEMORY",
    "TMP_SUFFIX",
    "ApplyError",
    "ApplyResult",
    "WriteResult",
    "apply",
    "provenance",
    "verify_stores",
    "write",
]
