"""Keeping peak RSS at what is in use while shards stream through codec threads.

glibc gives every thread its own malloc arena; freed shard buffers stay in them, and peak RSS
climbs block after block. Two arenas, and a trim after each block, keep RSS near the memory
actually in use. Elsewhere (macOS, musl) these are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any

M_ARENA_MAX = -8


@cache
def _glibc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")  # glibc by name: find_library would run ldconfig
        libc.mallopt  # noqa: B018
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


@cache
def bound_malloc_arenas() -> None:
    """Limit malloc to two arenas; takes full effect if called before threads start."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, 2)


def release_memory() -> None:
    """Return freed memory to the operating system."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
