"""Executing layouts: writing in-memory AnnData, streaming rewrites of stores, verification."""

from annlayout.rewrite.atomic import TMP_SUFFIX, ApplyError
from annlayout.rewrite.memory import WriteResult, provenance, read_input, write
from annlayout.rewrite.stream import DEFAULT_MEMORY, ApplyResult, apply
from annlayout.rewrite.verify import verify_stores

__all__ = [
    "DEFAULT_MEMORY",
    "TMP_SUFFIX",
    "ApplyError",
    "ApplyResult",
    "WriteResult",
    "apply",
    "provenance",
    "read_input",
    "verify_stores",
    "write",
]
