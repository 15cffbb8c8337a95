"""Combining many inputs into one matrix, the pure part: which genes the result has and where
each input's columns go, and the rows of a CSR block moved onto those columns.

No IO: the streaming writer reads row blocks of each input and passes them through
:func:`remap_rows`; the reference for both is ``anndata.concat`` with the same ``join``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from typing import Literal

import numpy as np
import pandas as pd

Join = Literal["inner", "outer"]


@dataclass(frozen=True)
class VarAlignment:
    """The result's var names, and per input the result column of each input column (-1:
    not in the result, an inner join dropped it)."""

    var_names: pd.Index
    column_maps: list[np.ndarray]

    def monotonic(self, i: int) -> bool:
        """Input ``i``'s kept columns keep their order: rows need no re-sorting."""
        kept = self.column_maps[i][self.column_maps[i] >= 0]
        return bool(np.all(kept[1:] > kept[:-1]))


def align_vars(var_names: list[pd.Index], join: Join = "inner") -> VarAlignment:
    """Genes aligned by name as ``anndata.concat`` aligns them: ``inner`` keeps the genes
    every input has (in the first input's order), ``outer`` every gene any input has (sorted
    where the names sort, as pandas' union does)."""
    if not var_names:
        raise ValueError("no inputs to combine")
    for names in var_names:
        if not names.is_unique:
            duplicated = names[names.duplicated()][0]
            raise ValueError(f"var name {duplicated!r} appears twice in one input")
    if join == "inner":
        result = reduce(lambda a, b: a.intersection(b, sort=False), var_names)
    elif join == "outer":
        result = reduce(lambda a, b: a.union(b), var_names)
    else:
        raise ValueError(f"join {join!r}: use inner or outer")
    maps = [np.asarray(result.get_indexer(names), dtype=np.int64) for names in var_names]
    return VarAlignment(result, maps)


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
        kept = column_map[column_map >= 0]
        monotonic = bool(np.all(kept[1:] > kept[:-1]))
    if not monotonic:
        order = np.lexsort((mapped, rows))
        mapped, data = mapped[order], data[order]
    counts = np.bincount(rows, minlength=indptr.size - 1)
    new_indptr = np.zeros(indptr.size, dtype=np.int64)
    np.cumsum(counts, out=new_indptr[1:])
    return new_indptr, mapped, data
