"""Combining many inputs into one matrix, the pure part: which genes the result has and where
each input's columns go, and the rows of a CSR block moved onto those columns.

No IO: ``annlayout.concat`` reads row blocks of each input and passes them through
:func:`remap_rows`; which genes the result has is ``anndata.concat``'s decision (join, order),
taken on the inputs' obs and var alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from annlayout.base.errors import IntegrityError
from annlayout.planning.memory import rows_per_block


def column_maps(result: pd.Index, inputs: list[pd.Index]) -> list[np.ndarray]:
    """Per input, the result column of each of its columns (-1: not in the result, which an
    inner join dropped). ``result`` is the var index ``anndata.concat`` chose."""
    for names in inputs:
        if not names.is_unique:
            duplicated = names[names.duplicated()][0]
            raise ValueError(f"var name {duplicated!r} appears twice in one input")
    dtype = np.int32 if len(result) < 2**31 else np.int64  # half the bytes moved per value
    return [np.asarray(result.get_indexer(names), dtype=dtype) for names in inputs]


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
    if keep.all():
        new_indptr = np.asarray(indptr, dtype=np.int64)
    else:  # a row's new start: how many kept values lie before its old start
        kept = np.flatnonzero(keep)
        mapped, data = mapped[kept], data[kept]
        new_indptr = np.searchsorted(kept, indptr).astype(np.int64)
    if monotonic is None:
        monotonic = is_monotonic(column_map)
    if not monotonic:  # scipy sorts each row on its own: ~8x a global lexsort of the block
        n_columns = int(column_map.max(initial=0)) + 1
        block = sp.csr_matrix((data, mapped, new_indptr), shape=(indptr.size - 1, n_columns))
        block.has_sorted_indices = False
        block.sort_indices()
        mapped, data = block.indices, block.data
    return new_indptr, mapped, data


def shuffled(n_obs: int, seed: int) -> np.ndarray:
    """A uniform random permutation, the same for the same seed on every platform (numpy's
    PCG64): row ``i`` of the result is row ``order[i]`` of the concatenation."""
    return np.random.default_rng(seed).permutation(n_obs).astype(np.int64)


def grouped(values: pd.Series) -> np.ndarray:
    """Rows ordered by a column, stably (input order kept within a group): categories in
    their declared order, other values sorted, missing values last."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        keys = values.cat.codes.to_numpy().astype(np.int64)
    else:
        keys = pd.factorize(values, sort=True)[0].astype(np.int64)
    keys[keys < 0] = keys.max(initial=0) + 1  # NaN: code -1
    return np.argsort(keys, kind="stable").astype(np.int64)


def reorder_csr(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A CSR block's rows taken in ``order``: scipy's row gather (C++, 4-8x a numpy gather)."""
    narrow = indptr[-1] < 2**31 and indices.dtype == np.int32  # else scipy widens to int64
    ptr = np.asarray(indptr, dtype=np.int32 if narrow else np.int64)
    n_columns = int(indices.max(initial=-1)) + 1
    block = sp.csr_matrix((data, indices, ptr), shape=(ptr.size - 1, n_columns), copy=False)
    taken = block[np.asarray(order, dtype=np.int64)]
    return taken.indptr.astype(np.int64), taken.indices, taken.data


def by_bucket(
    buckets: np.ndarray, n_buckets: int, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A CSR block's rows grouped by ``buckets`` (the bucket of each row), keeping their order
    within a bucket: (the rows' order, indptr, indices, data, and the first row of each bucket
    and the end: ``n_buckets + 1`` bounds)."""
    order = np.argsort(buckets, kind="stable")
    ptr, idx, val = reorder_csr(indptr, indices, data, order)
    bounds = np.searchsorted(buckets[order], np.arange(n_buckets + 1))
    return order, ptr, idx, val, bounds


def in_new_order(
    ranks: np.ndarray,
    lengths: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    first: int,
    n_rows: int,
    bucket: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bucket's rows, as they arrived (``ranks``: each row's new position, ``lengths``: its
    nonzeros, whose indices and data follow each other), as CSR in their new order; each new
    position ``first:first + n_rows`` must have arrived exactly once."""
    order = np.argsort(ranks, kind="stable")
    if ranks.size != n_rows:
        raise IntegrityError(f"bucket {bucket}: {ranks.size} rows arrived, {n_rows} expected")
    expected = np.arange(first, first + n_rows)
    if not np.array_equal(ranks[order], expected):
        wrong = int(ranks[order][ranks[order] != expected][0])
        raise IntegrityError(f"bucket {bucket}: row {wrong} arrived twice or does not belong")
    indptr = np.zeros(ranks.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    return reorder_csr(indptr, indices, data, order)


def window_entropy(sources: np.ndarray, window: int = 256) -> float:
    """Mean Shannon entropy, in bits, of the source labels in consecutive windows of
    ``window`` rows: what a loader reading ``window`` contiguous cells sees of the mix.
    ``sources`` are small non-negative integers (the input of each row)."""
    n_windows = sources.size // window
    if n_windows == 0:
        return 0.0
    labels = np.asarray(sources[: n_windows * window], dtype=np.int64).reshape(n_windows, window)
    k = int(labels.max()) + 1
    offsets = labels + np.arange(n_windows, dtype=np.int64)[:, None] * k
    counts = np.bincount(offsets.ravel(), minlength=n_windows * k).reshape(n_windows, k)
    p = counts / window
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(p), 0.0)
    return float(terms.sum(axis=1).mean())


def mixing(sources: np.ndarray, window: int = 256, seed: int = 0) -> tuple[float, float]:
    """(entropy of the rows as ordered, entropy of the same labels under a uniform random
    permutation): equal for a true shuffle, zero-ish for inputs laid end to end."""
    expected = np.random.default_rng(seed).permutation(sources)
    return window_entropy(sources, window), window_entropy(expected, window)


def input_blocks(
    sizes: list[tuple[int, int]], budget: int, start: int = 0
) -> list[tuple[int, int, int, int]]:
    """Row blocks of inputs stacked one after another, each sized by its input's own density
    (:func:`rows_per_block`): (input, first row, end row, first row in the stack), from row
    ``start`` of the stack on. ``sizes``: (rows, stored values) of each input."""
    blocks = []
    first = 0  # the input's first row in the stack
    for number, (n_rows, nnz) in enumerate(sizes):
        step = rows_per_block(nnz, n_rows, budget)
        blocks += [(number, lo, min(n_rows, lo + step), first + lo)
                   for lo in range(max(0, start - first), n_rows, step)]  # fmt: skip
        first += n_rows
    return blocks
