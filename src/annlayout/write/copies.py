"""Second orientations of sparse matrices: where they live, what they mirror, how to build them.

A CSR primary ``X`` may keep a CSC copy in ``X/csc`` (and a CSC primary a CSR copy in
``X/csr``): a subgroup inside the element's own group, with its own ``data``, ``indices`` and
``indptr`` and anndata encoding attributes. anndata's readers (``read_zarr``, ``read_h5ad``,
backed mode, ``sparse_dataset``, ``read_lazy``) read ``data``, ``indices`` and ``indptr`` by
name and ignore the subgroup. The copy records what it mirrors (shape, nnz and a checksum of
the primary's ``indptr``), so a primary rewritten after the copy was made is detected.

The out-of-core transpose (:func:`transposed_ranges`) counts nonzeros per minor index first,
then builds the transposed arrays in passes over ranges of minor indices, each pass a
contiguous range of the output that fits the memory budget.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from annlayout.planning.memory import MAX_READ_BLOCK, pass_nonzeros
from annlayout.storage.h5 import read_slice

COPY_KEY = "annlayout-copy-of"
ORIENTATIONS = ("csr", "csc")


def indptr_checksum(indptr: np.ndarray) -> str:
    """sha256 of the offsets as little-endian int64, whatever dtype they are stored in."""
    return hashlib.sha256(np.ascontiguousarray(indptr, dtype="<i8").tobytes()).hexdigest()


def mirror_record(shape: tuple[int, ...], nnz: int, indptr: np.ndarray, orientation: str) -> dict:
    return {
        "orientation": orientation,
        "shape": [int(n) for n in shape],
        "nnz": int(nnz),
        "indptr_sha256": indptr_checksum(indptr),
    }


def write_record(copy: Any, record: dict) -> None:
    """Store the mirror record (as JSON text in HDF5, whose attributes hold no mappings)."""
    import h5py

    copy.attrs[COPY_KEY] = json.dumps(record) if isinstance(copy, h5py.Group) else record


def read_record(copy: Any) -> dict:
    value = copy.attrs[COPY_KEY]
    return json.loads(value) if isinstance(value, str | bytes) else dict(value)


def copy_group(element: Any) -> Any | None:
    """The copy subgroup of a sparse element group, if it has one."""
    for name in ORIENTATIONS:
        if name in element and COPY_KEY in element[name].attrs:
            return element[name]
    return None


def stale_reason(element: Any, copy: Any, primary_indptr: np.ndarray | None = None) -> str | None:
    """Why ``copy`` no longer mirrors ``element``'s primary, or None if it does."""
    record = read_record(copy)
    shape = [int(n) for n in element.attrs["shape"]]
    if list(record.get("shape", [])) != shape:
        return f"shape {record.get('shape')} recorded, primary is {shape}"
    nnz = int(element["data"].shape[0])
    if int(record.get("nnz", -1)) != nnz:
        return f"{record.get('nnz')} nonzeros recorded, primary has {nnz}"
    indptr = element["indptr"][...] if primary_indptr is None else primary_indptr
    if record.get("indptr_sha256") != indptr_checksum(indptr):
        return "the primary's indptr changed after the copy was written"
    return None


def transposed_indptr(
    indices: Any, nnz: int, n_minor: int, read_block: int = MAX_READ_BLOCK
) -> np.ndarray:
    """The indptr of the transpose: nonzeros per minor index, counted in one pass."""
    counts = np.zeros(n_minor, dtype=np.int64)
    for start in range(0, nnz, read_block):
        counts += np.bincount(read_slice(indices, start, start + read_block), minlength=n_minor)
    new_indptr = np.zeros(n_minor + 1, dtype=np.int64)
    np.cumsum(counts, out=new_indptr[1:])
    return new_indptr


def transposed_ranges(
    data: Any,
    indices: Any,
    indptr: np.ndarray,
    new_indptr: np.ndarray,
    *,
    budget: int,
    read_block: int = MAX_READ_BLOCK,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Transpose a compressed sparse matrix out of core.

    ``data`` and ``indices`` are array-likes read in slices (h5py, zarr, numpy); ``indptr``
    and ``new_indptr`` (from :func:`transposed_indptr`) are in memory. Yields
    ``(start, stop, data, major_indices)``: consecutive ranges of the transposed arrays
    covering ``[0, nnz)``, each pass's buffers within ``budget`` bytes, one pass over the input per range.
    """
    nnz = int(indptr[-1]) if len(indptr) else 0
    n_minor = len(new_indptr) - 1
    if nnz == 0:
        return
    per_pass = pass_nonzeros(budget, np.dtype(data.dtype).itemsize)
    row_starts = np.asarray(indptr, dtype=np.int64)
    lo = 0
    while lo < n_minor:
        hi = int(np.searchsorted(new_indptr, new_indptr[lo] + per_pass, side="right")) - 1
        hi = min(max(hi, lo + 1), n_minor)
        base, size = int(new_indptr[lo]), int(new_indptr[hi] - new_indptr[lo])
        out_data = np.empty(size, dtype=data.dtype)
        out_major = np.empty(size, dtype=np.int64)
        fill = new_indptr[lo:hi] - base  # next free slot per minor index in this pass
        for start in range(0, nnz, read_block):
            stop = min(nnz, start + read_block)
            minor = read_slice(indices, start, stop).astype(np.int64, copy=False)
            keep = (minor >= lo) & (minor < hi)
            if not keep.any():
                continue
            positions = np.flatnonzero(keep) + start
            # the major index of each kept nonzero: which indptr range holds its position
            major = np.searchsorted(row_starts, positions, side="right") - 1
            values = read_slice(data, start, stop)[keep]
            minor = minor[keep] - lo
            order = np.argsort(minor, kind="stable")  # input is major-sorted: stays sorted
            minor, major, values = minor[order], major[order], values[order]
            first = np.concatenate([[True], minor[1:] != minor[:-1]])
            group_start = np.flatnonzero(first)
            group_size = np.diff(np.append(group_start, minor.size))
            offsets = np.arange(minor.size) - np.repeat(group_start, group_size)
            slots = fill[minor] + offsets
            out_data[slots] = values
            out_major[slots] = major
            fill[minor[group_start]] += group_size
        yield base, base + size, out_data, out_major
        del out_data, out_major  # before the next pass allocates its own
        lo = hi
