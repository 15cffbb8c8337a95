"""Executing layouts: writing in-memory AnnData, streaming rewrites of stores, verification.

The names below are imported on first use (PEP 562): the CLI imports
``annlayout.rewrite.memory_limits`` and ``annlayout.rewrite.atomic`` at start-up, and those
must not bring zarr, anndata and dask with them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from annlayout.rewrite.atomic import TMP_SUFFIX, ApplyError
    from annlayout.rewrite.in_memory import WriteResult, write
    from annlayout.rewrite.stream import DEFAULT_MEMORY, ApplyResult, apply
    from annlayout.rewrite.verify import verify_stores
    from annlayout.stores import provenance

_LAZY = {
    "TMP_SUFFIX": "annlayout.rewrite.atomic",
    "ApplyError": "annlayout.rewrite.atomic",
    "WriteResult": "annlayout.rewrite.in_memory",
    "provenance": "annlayout.stores",
    "write": "annlayout.rewrite.in_memory",
    "DEFAULT_MEMORY": "annlayout.rewrite.stream",
    "ApplyResult": "annlayout.rewrite.stream",
    "apply": "annlayout.rewrite.stream",
    "verify_stores": "annlayout.rewrite.verify",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'annlayout.rewrite' has no attribute {name!r}")
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
