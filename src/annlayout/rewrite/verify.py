"""Does a rewritten store hold what its source holds? Compared element by element.

Both stores are read as anndata reads them (:func:`annlayout.encodings.read_upgraded`), so a
legacy form in the source and its current form in the output are the same element: an
upgrade, reported as such, never a difference. Arrays and sparse matrices are compared in
blocks within a memory budget, straight from the stores; everything else (dataframe dtypes,
strings, categoricals, nullables, scalars, uns) by value as anndata reads it. Layout changes
are not differences: chunks, shards, codecs, and the dtype of sparse indices and indptr
(``index_dtype``), and a sparse matrix's orientation may change; values, value dtypes, shapes
and other encodings may not.

A sparse matrix stored in another orientation (the rewritten primary, or a second copy) is
compared with the out-of-core transpose of the other side (:mod:`annlayout.copies`), in passes
sized by the memory model (:func:`annlayout.rewrite.blocks.verify_sizes`): neither matrix is
ever read whole.
"""

from __future__ import annotations

import math
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from annlayout.copies import copy_group, stale_reason, transposed_indptr, transposed_ranges
from annlayout.defaults import VERIFY_MEMORY
from annlayout.encodings import (
    SPARSE_ENCODINGS,
    StandIn,
    encoding_of,
    is_group,
    sparse_shape,
    written_elements,
)
from annlayout.rewrite.blocks import parse_size, transpose_fixed, verify_sizes
from annlayout.rewrite.memory_limits import release_memory
from annlayout.stores import AnnDataStore, open_anndata

DEFAULT_VERIFY_MEMORY = parse_size(VERIFY_MEMORY)
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

    A store may be given opened (:func:`~annlayout.stores.open_anndata`; apply hands over its
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
            if path not in found:
                if encoding != "null":
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
                if isinstance(other, StandIn) and other_encoding in SPARSE_ENCODINGS:
                    report.differences += check_copy(path, other.node, memory)
            except Exception as err:  # a corrupt chunk: the codec's words, named by element
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                report.differences.append(
                    f"{path}: a read failed, in {a.location} or {b.location} "
                    f"({type(err).__name__}: {reason})"
                )
    report.differences += [
        f"{path}: not in {a.location}" for path, (e, _) in found.items() if e != "null"
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
    if encoding_a in SPARSE_ENCODINGS and encoding_b in SPARSE_ENCODINGS:
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
    problem = _frame_difference(a, b) if encoding_a == "dataframe" else difference(a, b)
    return [f"{path}: {problem}"] if problem else []


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
