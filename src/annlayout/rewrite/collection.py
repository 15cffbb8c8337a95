"""Combining many inputs into one matrix, the pure part: which genes the result has and where
each input's columns go, and the rows of a CSR block moved onto those columns.

No IO: ``annlayout.concat`` reads row blocks of each input and passes them through
:func:`remap_rows`; which genes the result has is ``anndata.concat``'s decision (join, order),
taken on the inputs' obs and var alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def column_maps(result: pd.Index, inputs: list[pd.Index]) -> list[np.ndarray]:
    """Per input, the result column of each of its columns (-1: not in the result, which an
    inner join dropped). ``result`` is the var index ``anndata.concat`` chose."""
    for names in inputs:
        if not names.is_unique:
            duplicated = names[names.duplicated()][0]
            raise ValueError(f"var name {duplicated!r} appears twice in one input")
    return [np.asarray(result.get_indexer(names), dtype=np.int64) for names in inputs]


def is_monotonic(column_map: np.ndarray) -> bool:
    """The kept columns keep their order: a block's rows need no re-sorting."""
    kept = column_map[column_map >= 0]
    return bool(np.all(kept[1:] > kept[:-1]))


def remap_rows(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    column_map: np.ndarray,
    *,
    monotonic: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A CSR block's rows on the result's columns: indices mapped, dropped columns removed,
    each row's indices sorted again where the map changed their order."""
    mapped = column_map[indices]
    keep = mapped >= 0
    rows = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    if not keep.all():
        mapped, data, rows = mapped[keep], data[keep], rows[keep]
    if monotonic is None:
        monotonic = is_monotonic(column_map)
    if not monotonic:
        order = np.lexsort((mapped, rows))
        mapped, data = mapped[order], data[order]
    counts = np.bincount(rows, minlength=indptr.size - 1)
    new_indptr = np.zeros(indptr.size, dtype=np.int64)
    np.cumsum(counts, out=new_indptr[1:])
    return new_indptr, mapped, data
