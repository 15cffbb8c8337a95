"""What a dataset holds, as the planner sees it: element paths, encodings, shapes, dtypes,
nonzero counts and how each array is stored now. Plain models, no IO: :mod:`annlayout.planning.survey`
fills them from a store or an in-memory AnnData, :mod:`annlayout.planning.plan` plans from them (and
its tests build them by hand).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class ArrayInfo(BaseModel):
    """One stored array: a plain element, or a part (``data``, ``codes``, ...) of one."""

    name: str  # "" for an element that is itself an array
    shape: tuple[int, ...]
    dtype: str
    itemsize: int
    chunks: tuple[int, ...] | None = None
    shards: tuple[int, ...] | None = None
    codecs: str | None = None
    stored_bytes: int | None = None
    #: target formats that cannot store this dtype, with the reason (encodings.unholdable)
    unholdable: dict[str, str] = {}


class ElementInfo(BaseModel):
    path: str
    encoding: str
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    nnz: int | None = None
    arrays: list[ArrayInfo] = []

    @property
    def stored_bytes(self) -> int | None:
        sizes = [a.stored_bytes for a in self.arrays]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    def array(self, name: str) -> ArrayInfo:
        return next(a for a in self.arrays if a.name == name)


class Survey(BaseModel):
    source: str
    format: Literal["zarr", "h5ad", "memory"]
    zarr_format: int | None = None
    shape: tuple[int, int] | None = None
    elements: list[ElementInfo]
    provenance: dict[str, Any] | None = None
    #: legacy forms met, one line each; elements are then listed as anndata upgrades them
    upgrades: list[str] = []

    def element(self, path: str) -> ElementInfo:
        return next(e for e in self.elements if e.path == path)


__all__ = ["ArrayInfo", "ElementInfo", "Survey"]
