"""Does a rewritten store hold what its source holds? Compared element by element.

Both stores are read as anndata reads them (:func:`annlayout.format.encodings.read_upgraded`), so a
legacy form in the source and its current form in the output are the same element: an
upgrade, reported as such, never a difference. Arrays and sparse matrices are compared in
blocks within a memory budget, straight from the stores; everything else (dataframe dtypes,
strings, categoricals, nullables, scalars, uns) by value as anndata reads it. Layout changes
are not differences: chunks, shards, codecs, and the dtype of sparse indices and indptr
(``index_dtype``), and a sparse matrix's orientation may change; values, value dtypes, shapes
and other encodings may not.

A sparse matrix stored in another orientation (the rewritten primary, or a second copy) is
compared with the out-of-core transpose of the other side (:mod:`annlayout.write.copies`), in passes
sized by the memory model (:func:`annlayout.planning.memory.verify_sizes`): neither matrix is
ever read whole.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from annlayout.base.malloc import release_memory
from annlayout.format.encodings import (
    StandIn,
    encoding_of,
    encoding_spec,
    is_group,
    sparse_shape,
    written_elements,
)
from annlayout.format.registry import Dispatch, get
from annlayout.planning.memory import (
    DEFAULT_VERIFY_MEMORY,
    parse_size,
    transpose_fixed,
    verify_sizes,
)
from annlayout.storage.commit import check_interrupted
from annlayout.storage.stores import AnnDataStore, open_anndata
from annlayout.write.copies import copy_group, stale_reason, transposed_indptr, transposed_ranges

#: Values compared at once within a block (its masks: a few MB).
COMPARE_VALUES = 1 << 20


@dataclass
class VerifyReport:
    differences: list[str] = field(default_factory=list)
    upgrades: list[str] = field(default_factory=list)  # legacy forms of the source


def verify_stores(
    source: str | Path, rewritten: str | Path, *, memory: int | str = DEFAULT_VERIFY_MEMORY
) -> list[str]:
    """Differences between two AnnData stores, one line each; empty when they are equal."""
    return verify_report(source, rewritten, memory=memory).differences


def verify_report(
    source: str | Path | AnnDataStore,
    rewritten: str | Path | AnnDataStore,
    *,
    memory: int | str = DEFAULT_VERIFY_MEMORY,
) -> VerifyReport:
    """Differences between two AnnData stores, and the legacy forms the source upgraded.

    A store may be given opened (:func:`~annlayout.storage.stores.open_anndata`; apply hands over its
    input, read once): it stays open for its owner. Paths are opened and closed here.
    """
    with ExitStack() as owned:
        a, b = (
            s if isinstance(s, AnnDataStore) else owned.enter_context(open_anndata(s))
            for s in (source, rewritten)
        )
        return _report(a, b, parse_size(memory))


def _report(a: AnnDataStore, b: AnnDataStore, memory: int) -> VerifyReport:
    block_bytes, _ = verify_sizes(memory)
    report = VerifyReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        upgraded = a.upgraded()
        report.upgrades = upgraded.upgrades
        expected = {p: (e, v) for p, e, v in written_elements(upgraded)}
        found = {p: (e, v) for p, e, v in written_elements(b.upgraded())}
        for path, (encoding, value) in expected.items():
            check_interrupted()  # apply defers Ctrl-C while it verifies: honoured here
            if path not in found:
                if not _empty(encoding):
                    report.differences.append(f"{path}: missing from {b.location}")
                continue
            other_encoding, other = found.pop(path)
            if _read_apart(path, encoding, other_encoding, a.root, b.root):
                other_encoding = encoding
                value, other = _as_strings(value), _as_strings(other)
            try:
                report.differences += compare_element(
                    path, encoding, value, other_encoding, other, block_bytes, memory
                )
                if isinstance(other, StandIn) and _sparse(other_encoding):
                    report.differences += check_copy(path, other.node, memory)
            except Exception as err:  # a corrupt chunk: the codec's words, named by element
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                report.differences.append(
                    f"{path}: a read failed, in {a.location} or {b.location} "
                    f"({type(err).__name__}: {reason})"
                )
    report.differences += [
        f"{path}: not in {a.location}" for path, (e, _) in found.items() if not _empty(e)
    ]
    return report


def _read_apart(path: str, a: str, b: str, root_a: Any, root_b: Any) -> bool:
    """The same stored strings, read apart by anndata: 0.13 on pandas 3 reads a zarr
    ``string-array`` as ``object`` and an h5ad one as ``str``, whose writer then says
    ``nullable-string-array``. The stored encodings decide, not the reads."""
    if {a, b} != {"string-array", "nullable-string-array"}:
        return False
    try:
        return _stored_strings(root_a[path]) == _stored_strings(root_b[path])
    except KeyError:  # a legacy form on one side: the reads decide
        return False


def _stored_strings(node: Any) -> str | None:
    """A node's encoding; anndata < 0.8 wrote string columns as plain arrays without one."""
    encoding = encoding_of(node)
    if encoding is None and not is_group(node) and np.dtype(node.dtype).kind in "OTUS":
        return "string-array"
    return encoding


def _as_strings(values: Any) -> np.ndarray:
    """Strings with missing values as None, whatever array or dtype holds them."""
    strings = np.array(values, dtype=object)
    strings[pd.isna(strings)] = None
    return strings


def compare_element(
    path: str,
    encoding_a: str,
    a: Any,
    encoding_b: str,
    b: Any,
    block_bytes: int,
    memory: int = DEFAULT_VERIFY_MEMORY,
) -> list[str]:
    if _sparse(encoding_a) and _sparse(encoding_b):
        if isinstance(a, StandIn) and isinstance(b, StandIn):
            return _compare_sparse(path, a.node, b.node, block_bytes, memory)
    elif encoding_a != encoding_b:
        return [f"{path}: encoding {encoding_a} became {encoding_b}"]
    if isinstance(a, StandIn) and isinstance(b, StandIn):
        return _compare_dense(path, a.node, b.node, block_bytes)
    if isinstance(a, StandIn) or isinstance(b, StandIn):
        # read in memory on one side only: a legacy form (a field of a record array in obsm,
        # say) that the output stores as an array; such elements are small
        from anndata.io import read_elem

        a, b = (read_elem(v.node) if isinstance(v, StandIn) else v for v in (a, b))
    spec = get(encoding_a)
    problem = _frame_difference(a, b) if spec is not None and spec.columns else difference(a, b)
    return [f"{path}: {problem}"] if problem else []


def _sparse(encoding: str | None) -> bool:
    spec = get(encoding)
    return spec is not None and spec.sparse


def _empty(encoding: str | None) -> bool:
    """No value (an absent raw): missing on one side is no difference."""
    spec = get(encoding)
    return spec is not None and spec.empty


def _frame_difference(a: pd.DataFrame, b: pd.DataFrame) -> str | None:
    """Column order and the index's dtype and name (columns are elements of their own)."""
    if list(a.columns) != list(b.columns):
        return f"columns {list(a.columns)} became {list(b.columns)}"
    if str(a.index.dtype) != str(b.index.dtype) or a.index.name != b.index.name:
        return f"index {a.index.dtype} {a.index.name!r} became {b.index.dtype} {b.index.name!r}"
    return None


def _compare_sparse(
    path: str, node_a: Any, node_b: Any, block_bytes: int, memory: int = DEFAULT_VERIFY_MEMORY
) -> list[str]:
    shape_a, shape_b = sparse_shape(node_a), sparse_shape(node_b)
    if shape_a != shape_b:
        return [f"{path}: shape {shape_a} became {shape_b}"]
    dtype_a, dtype_b = np.dtype(node_a["data"].dtype), np.dtype(node_b["data"].dtype)
    if dtype_a != dtype_b:
        return [f"{path}: dtype {dtype_a} became {dtype_b}"]
    nnz_a, nnz_b = int(node_a["data"].shape[0]), int(node_b["data"].shape[0])
    if nnz_a != nnz_b:
        return [f"{path}: {nnz_a:,} nonzeros became {nnz_b:,}"]
    if encoding_of(node_a) != encoding_of(node_b):  # against the transpose, out of core
        problem = compare_transposed(node_a, node_b, memory)
        return [f"{path}{problem}"] if problem else []
    out = []
    for part in ("indptr", "indices", "data"):
        problem = _compare_blocks(node_a[part], node_b[part], block_bytes, check_dtype=False)
        if problem:
            out.append(f"{path}/{part}: {problem}")
    return out


def check_copy(path: str, element: Any, memory: int) -> list[str]:
    """A second orientation must mirror its primary: recorded identity, then every value."""
    copy = copy_group(element)
    if copy is None:
        return []
    where = f"{path}/{copy.name.rpartition('/')[2]}"
    primary_indptr = element["indptr"][...]
    reason = stale_reason(element, copy, primary_indptr)
    if reason:
        return [f"{where}: stale copy: {reason}"]
    problem = compare_transposed(element, copy, memory, primary_indptr, what="the primary")
    return [f"{where}{problem}"] if problem else []


def compare_transposed(
    a: Any,
    b: Any,
    memory: int,
    indptr_a: np.ndarray | None = None,
    what: str = "the input",
) -> str | None:
    """Does the sparse group ``b`` hold the transpose of ``a`` (another orientation of the
    same matrix)? ``a`` is transposed out of core in passes within ``memory`` and each pass
    compared with the same range of ``b``; within a major index of ``b``, the order of its
    indices does not matter. Returns the problem (``/part: ...``) or None."""
    indptr_a = a["indptr"][...] if indptr_a is None else indptr_a
    n_major_b = int(b["indptr"].shape[0]) - 1
    nnz = int(indptr_a[-1]) if len(indptr_a) else 0
    _, sizes = verify_sizes(memory, fixed=transpose_fixed(len(indptr_a), n_major_b))
    release_memory()  # what comparing the primary freed: the passes' room is counted from zero
    expected_indptr = transposed_indptr(a["indices"], nnz, n_major_b, sizes.read_block)
    indptr_b = np.asarray(b["indptr"][...], dtype=np.int64)
    if not np.array_equal(expected_indptr, indptr_b):
        return f"/indptr: does not match {what}"
    for start, stop, data, major in transposed_ranges(
        a["data"], a["indices"], indptr_a, expected_indptr,
        budget=sizes.pass_budget, read_block=sizes.read_block,
    ):  # fmt: skip
        check_interrupted()
        stored_data = np.asarray(b["data"][start:stop])
        stored_indices = np.asarray(b["indices"][start:stop])
        stored_indices, stored_data = _sorted_within(stored_indices, stored_data, indptr_b, start)
        for name, stored, expected in (("data", stored_data, data),
                                       ("indices", stored_indices, major)):  # fmt: skip
            # compared as stored where it widens losslessly (int32 indices against int64
            # majors): a converted copy of the range is as large as the pass's own indices
            if not np.can_cast(stored.dtype, expected.dtype, "safe"):
                stored = stored.astype(expected.dtype)
            if not _equal_values(stored, expected).all():
                return f"/{name}: does not match {what}"
        del data, major, stored_data, stored_indices, stored
        release_memory()  # the pass and the range read back, before the next pass
    return None


def _sorted_within(
    indices: np.ndarray, data: np.ndarray, indptr: np.ndarray, start: int
) -> tuple[np.ndarray, np.ndarray]:
    """``indices[start:]`` sorted within each major index (whose offsets ``indptr`` holds), with
    ``data`` in the same order; unchanged (not copied) when they already are."""
    if indices.size < 2:
        return indices, data
    ascending = indices[1:] >= indices[:-1]
    stop = start + indices.size
    # a new major index may start lower: positions where one starts break no order
    starts = indptr[(indptr > start) & (indptr < stop)] - start
    ascending[starts - 1] = True
    if ascending.all():
        return indices, data
    major = np.searchsorted(indptr, np.arange(start, stop), side="right") - 1
    order = np.lexsort((indices, major))
    return indices[order], data[order]


def _compare_dense(path: str, node_a: Any, node_b: Any, block_bytes: int) -> list[str]:
    if tuple(node_a.shape) != tuple(node_b.shape):
        return [f"{path}: shape {tuple(node_a.shape)} became {tuple(node_b.shape)}"]
    problem = _compare_blocks(node_a, node_b, block_bytes, check_dtype=True)
    return [f"{path}: {problem}"] if problem else []


def _compare_blocks(a: Any, b: Any, block_bytes: int, *, check_dtype: bool) -> str | None:
    if check_dtype and np.dtype(a.dtype) != np.dtype(b.dtype):
        return f"dtype {np.dtype(a.dtype)} became {np.dtype(b.dtype)}"
    if tuple(a.shape) != tuple(b.shape):
        return f"shape {tuple(a.shape)} became {tuple(b.shape)}"
    rows = a.shape[0] if a.shape else 0
    row_values = max(1, math.prod(a.shape[1:]))
    itemsize = max(np.dtype(a.dtype).itemsize, np.dtype(b.dtype).itemsize)  # either side
    step = max(1, block_bytes // (row_values * itemsize))
    # compared a slice at a time: masks of a whole block (equal, NaNs, their negation) would
    # hold 1.25x a float32 block more
    sub = max(1, COMPARE_VALUES // row_values)
    for start in range(0, rows, step):
        check_interrupted()
        block_a = np.asarray(a[start : start + step])
        block_b = np.asarray(b[start : start + step])
        count, first = 0, 0
        for offset in range(0, len(block_a), sub):
            unequal = ~_equal_values(block_a[offset : offset + sub], block_b[offset : offset + sub])
            if unequal.any():
                first = first if count else start + offset + int(np.argwhere(unequal)[0][0])
                count += int(unequal.sum())
        if count:
            return f"{count:,} values differ (first at index {first:,})"
    return None


def _equal_values(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    equal = a == b
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        equal |= np.isnan(a) & np.isnan(b)
    return np.asarray(equal)


def difference(a: Any, b: Any) -> str | None:
    """Why two in-memory element values differ, or None."""
    import scipy.sparse as sp

    if a is None or b is None:
        return None if a is b else f"{_kind(a)} became {_kind(b)}"
    if sp.issparse(a) or sp.issparse(b):
        if not (sp.issparse(a) and sp.issparse(b)):
            return f"{_kind(a)} became {_kind(b)}"
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{a.shape} {a.dtype} became {b.shape} {b.dtype}"
        return None if (a != b).nnz == 0 else "values differ"
    if isinstance(a, pd.Categorical):
        if not isinstance(b, pd.Categorical):
            return f"categorical became {_kind(b)}"
        if list(a.categories) != list(b.categories) or a.ordered != b.ordered:
            return "categories differ"
        return None if np.array_equal(a.codes, b.codes) else "values differ"
    if isinstance(a, pd.api.extensions.ExtensionArray):
        if type(a) is not type(b) or a.dtype != b.dtype:
            return f"{a.dtype} became {getattr(b, 'dtype', _kind(b))}"
        return None if a.equals(b) else "values differ"
    if type(a).__module__.startswith("awkward"):
        import awkward as ak

        return None if ak.to_list(a) == ak.to_list(b) else "values differ"
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            return "keys differ"
        for key in a:
            problem = difference(a[key], b[key])
            if problem:
                return f"{key}: {problem}"
        return None
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return f"shape {a.shape} became {b.shape}"
        if a.dtype.names is not None or b.dtype.names is not None:  # record arrays
            if a.dtype.names != b.dtype.names:
                return f"fields {a.dtype.names} became {b.dtype.names}"
            for name in a.dtype.names:
                problem = difference(np.asarray(a[name]), np.asarray(b[name]))
                if problem:
                    return f"field {name!r}: {problem}"
            return None
        if a.dtype.kind in "OUST" or b.dtype.kind in "OUST":
            same = [str(x) for x in a.ravel().tolist()] == [str(x) for x in b.ravel().tolist()]
            return None if same else "values differ"
        if a.dtype != b.dtype:
            return f"dtype {a.dtype} became {b.dtype}"
        return None if _equal_values(a, b).all() else "values differ"
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return None
    if (
        type(a) is not type(b)
        and not (isinstance(a, str) and isinstance(b, str))
        and np.asarray(a).dtype != np.asarray(b).dtype
    ):
        return f"{_kind(a)} became {_kind(b)}"
    return None if a == b else f"{a!r} became {b!r}"


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


# --------------------------------------------------------------------------- rows of inputs
#
# concat and append are checked against their inputs, not against what they wrote on the
# way: each row of a stored matrix must hold an input row's values on the columns that row's
# genes have in the store. Rows are compared by a 64-bit digest of their (column, value)
# pairs, so each side is read once, in blocks within the memory budget, whatever order the
# rows were put in (a shuffle reads the inputs in order and the store in its own).

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_NAN_BITS = np.float64(np.nan).view(np.uint64)


@dataclass(frozen=True)
class RowsOf:
    """An input matrix whose rows a store holds: ``matrix.rows(start, stop)`` (CSR or an
    array), named ``source``; ``columns`` maps its columns to the store's (-1: a gene the
    store does not have)."""

    source: str
    matrix: Any
    columns: np.ndarray


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise (uint64 arithmetic wraps)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _pair_digests(columns: np.ndarray, values: np.ndarray) -> np.ndarray:
    """One digest per stored value: its column and its value as float64 (zeros and values
    on a column ``< 0`` count as absent: 0)."""
    as_float = np.asarray(values, dtype=np.float64)
    bits = as_float.view(np.uint64).copy()
    bits[np.isnan(as_float)] = _NAN_BITS  # one NaN
    columns = np.asarray(columns, dtype=np.int64)
    digests = _mix(_mix(columns.astype(np.uint64) + _GOLDEN) ^ bits)
    digests[(as_float == 0) | (columns < 0)] = 0
    return digests


def _row_sums(indptr: np.ndarray, digests: np.ndarray) -> np.ndarray:
    """Each row's digests summed (order within a row does not matter)."""
    ends = np.concatenate([np.zeros(1, np.uint64), np.cumsum(digests, dtype=np.uint64)])
    indptr = np.asarray(indptr, dtype=np.int64) - int(indptr[0])
    return ends[indptr[1:]] - ends[indptr[:-1]]


def block_row_digests(block: Any, columns: np.ndarray | None = None) -> np.ndarray:
    """A row digest per row of ``block`` (CSR or an array), its columns through ``columns``."""
    import scipy.sparse as sp

    if sp.issparse(block):
        block = sp.csr_matrix(block)
        indices = block.indices if columns is None else columns[block.indices]
        return _row_sums(block.indptr, _pair_digests(indices, block.data))
    block = np.asarray(block)
    n_rows, n_cols = block.shape[0], int(np.prod(block.shape[1:]))
    flat = block.reshape(n_rows, n_cols)
    cols = np.arange(n_cols) if columns is None else columns
    digests = _pair_digests(np.broadcast_to(cols, flat.shape).ravel(), flat.ravel())
    return digests.reshape(n_rows, n_cols).sum(axis=1, dtype=np.uint64)


def stored_row_digests(node: Any, memory: int, start: int = 0) -> np.ndarray:
    """A row digest per row of a stored matrix from row ``start`` on (CSR, CSC or dense),
    read in blocks within ``memory``."""
    element = str(node.name).strip("/")
    digests = _ROW_DIGESTS.of(encoding_of(node) or "array", element)
    return digests(node, memory, start)


RowDigests = Callable[[Any, int, int], np.ndarray]
#: how a stored matrix of each encoding is read for its rows' digests
_ROW_DIGESTS: Dispatch[RowDigests] = Dispatch("row digests", covers=lambda e: e.matrix)


@_ROW_DIGESTS.register("array")
def _dense_row_digests(node: Any, memory: int, start: int) -> np.ndarray:
    from annlayout.planning.memory import rows_per_block

    n_rows = int(node.shape[0])
    per_row = max(1, math.prod(node.shape[1:]))
    step = rows_per_block(per_row * max(1, n_rows - start), max(1, n_rows - start), memory)
    blocks = [block_row_digests(np.asarray(node[lo : lo + step]))
              for lo in range(start, n_rows, step)]  # fmt: skip
    return np.concatenate([np.zeros(0, np.uint64), *blocks])


@_ROW_DIGESTS.register("csr_matrix")
def _csr_row_digests(node: Any, memory: int, start: int) -> np.ndarray:
    from annlayout.planning.memory import rows_per_block

    n_rows, indptr, data, indices = _sparse_arrays(node)
    step = rows_per_block(int(indptr[-1] - indptr[start]), max(1, n_rows - start), memory)
    found = [np.zeros(0, np.uint64)]
    for lo, hi, a, b in _major_runs(indptr, start, n_rows, step):
        digests = _pair_digests(np.asarray(indices[a:b]), np.asarray(data[a:b]))
        found.append(_row_sums(indptr[lo : hi + 1], digests))
    return np.concatenate(found)


@_ROW_DIGESTS.register("csc_matrix")
def _csc_row_digests(node: Any, memory: int, start: int) -> np.ndarray:
    """Each column's values added to their rows."""
    from annlayout.planning.memory import rows_per_block

    n_rows, indptr, data, indices = _sparse_arrays(node)
    digests = np.zeros(n_rows, np.uint64)
    n_cols = indptr.size - 1
    step = rows_per_block(int(indptr[-1]), max(1, n_cols), memory)
    for lo, hi, a, b in _major_runs(indptr, 0, n_cols, step):
        cols = np.repeat(np.arange(lo, hi), np.diff(indptr[lo : hi + 1]))
        rows = np.asarray(indices[a:b], dtype=np.int64)
        np.add.at(digests, rows, _pair_digests(cols, np.asarray(data[a:b])))
    return digests[start:]


def _sparse_arrays(node: Any) -> tuple[int, np.ndarray, Any, Any]:
    """A sparse group's rows, its indptr in memory, and its data and indices arrays."""
    n_rows, _ = sparse_shape(node)
    return n_rows, np.asarray(node["indptr"][...], dtype=np.int64), node["data"], node["indices"]


def _major_runs(
    indptr: np.ndarray, first: int, n: int, step: int
) -> Iterator[tuple[int, int, int, int]]:
    """Runs of ``step`` rows (CSR) or columns (CSC) from ``first`` to ``n``, with the range of
    their nonzeros; stopped between two runs by an interrupt."""
    for lo in range(first, n, step):
        check_interrupted()
        hi = min(n, lo + step)
        yield lo, hi, int(indptr[lo]), int(indptr[hi])


def input_row_digests(parts: list[RowsOf], memory: int, n_store: int | None = None) -> np.ndarray:
    """The row digests of ``parts`` stacked, each row on the store's columns. ``n_store``: the
    store's columns, where one an input lacks holds NaN (a dense float matrix of an outer
    join, as anndata.concat fills it)."""
    from annlayout.planning.memory import rows_per_block

    found = [np.zeros(0, np.uint64)]
    for part in parts:
        n_rows = int(part.matrix.shape[0])
        step = rows_per_block(int(part.matrix.nnz), max(1, n_rows), memory)
        extra = np.uint64(0)
        if n_store is not None:  # the same for every row of this input
            absent = np.setdiff1d(np.arange(n_store), part.columns[part.columns >= 0])
            extra = _pair_digests(absent, np.full(absent.size, np.nan)).sum(dtype=np.uint64)
        for lo in range(0, n_rows, step):
            check_interrupted()
            found.append(block_row_digests(part.matrix.rows(lo, min(n_rows, lo + step)),
                                           part.columns) + extra)  # fmt: skip
    return np.concatenate(found)


def rows_difference(
    path: str, node: Any, parts: list[RowsOf], memory: int, *,
    order: np.ndarray | None = None, start: int = 0,
) -> str | None:  # fmt: skip
    """Does ``node`` hold, from row ``start`` on, the rows of ``parts`` in ``order`` (row
    ``i`` holds row ``order[i]`` of the stacked inputs)? The first row that does not, named
    with its input and row, or None."""
    dense_float = encoding_spec(node, path).dense and np.dtype(node.dtype).kind == "f"
    expected = input_row_digests(parts, memory, int(node.shape[1]) if dense_float else None)
    found = stored_row_digests(node, memory, start)
    if order is not None:
        expected = expected[order]
    if found.size != expected.size:
        return f"{path}: {found.size:,} rows where the inputs give {expected.size:,}"
    differ = np.flatnonzero(found != expected)
    if not differ.size:
        return None
    row = int(differ[0])
    stacked = int(order[row]) if order is not None else row
    sizes = np.cumsum([0, *(int(p.matrix.shape[0]) for p in parts)])
    number = int(np.searchsorted(sizes, stacked, side="right")) - 1
    return (
        f"{path}: row {start + row:,} does not hold row {stacked - int(sizes[number]):,} of "
        f"{parts[number].source}"
        + (f" ({differ.size - 1:,} more rows differ)" if differ.size > 1 else "")
    )


def frame_values_difference(expected: pd.DataFrame, stored: pd.DataFrame) -> str | None:
    """pandas' own comparison of two data frames (index, columns, dtypes, categories,
    values): its first line, or None."""
    try:
        pd.testing.assert_frame_equal(
            _strings_as_objects(stored), _strings_as_objects(expected), check_exact=True,
            check_column_type=False,
        )  # fmt: skip
    except AssertionError as err:
        return " ".join(str(err).split())[:200]
    return None


def _strings_as_objects(frame: pd.DataFrame) -> pd.DataFrame:
    """Strings as objects: pandas 3 reads the same strings as ``str`` from h5ad and as
    ``object`` from zarr (anndata 0.13), and concat keeps either; their values are compared."""
    frame = frame.copy(deep=False)
    for name in frame.columns:
        column = frame[name]
        if not isinstance(column.dtype, pd.CategoricalDtype) and pd.api.types.is_string_dtype(
            column.dtype
        ):
            frame[name] = column.astype(object)
    if pd.api.types.is_string_dtype(frame.index.dtype):
        frame.index = frame.index.astype(object)
    return frame
