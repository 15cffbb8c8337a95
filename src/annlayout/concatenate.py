"""``annlayout concat``: many AnnData stores into one store written with a layout.

Version one assembles the inputs into an intermediate store in a scratch directory, streaming
X and the layers every input has in row blocks (columns moved onto the result's genes on the
way), then applies the layout to it with :func:`annlayout.rewrite.apply`, which brings
sharding, second orientations, verification and the atomic (or uploaded) result. obs, var,
obsm and uns are what ``anndata.concat`` makes of the inputs' small elements with the same
options, so the result equals ``anndata.concat`` of the inputs read into memory.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from annlayout.defaults import MEMORY
from annlayout.encodings import SPARSE_ENCODINGS, writing
from annlayout.errors import AnnlayoutError, NotAnnDataError
from annlayout.reader import Dataset
from annlayout.reader import open as open_dataset
from annlayout.remote import is_url
from annlayout.rewrite.collection import column_maps, is_monotonic, remap_rows
from annlayout.rewrite.stream import ApplyResult, Progress, apply, parse_size

Join = Literal["inner", "outer"]
Merge = Literal["same", "unique", "first", "only"] | None
SCRATCH_CHUNK = 2**20  # values per chunk of the intermediate arrays (uncompressed)


class ConcatError(AnnlayoutError):
    """Inputs that cannot be combined."""


def concat(
    layout: Any,
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    join: Join = "inner",
    label: str | None = None,
    keys: Sequence[str] | None = None,
    index_unique: str | None = None,
    merge: Merge = None,
    memory: str | int = MEMORY,
    overwrite: bool = False,
    verify: bool = True,
    progress: Progress | None = None,
) -> ApplyResult:
    """Combine ``inputs`` into ``output`` with ``layout``, as ``anndata.concat(inputs, join=,
    label=, keys=, index_unique=, merge=, uns_merge=merge)`` would, out of core."""
    import anndata as ad

    start = time.perf_counter()
    if not inputs:
        raise ConcatError("concat: no inputs given")
    if keys is not None and len(keys) != len(inputs):
        raise ConcatError(f"--keys: {len(keys)} keys for {len(inputs)} inputs")
    budget = parse_size(memory)
    datasets = [_open(path) for path in inputs]
    for data in datasets:  # genes are aligned by name: a name twice has no one place
        if not data.var.index.is_unique:
            twice = data.var.index[data.var.index.duplicated()][0]
            raise ConcatError(f"{data.source}: var name {twice!r} appears twice; nothing written")
    light = [_small_elements(data) for data in datasets]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # obs names repeat between inputs: index_unique says
        try:
            combined = ad.concat(
                light, join=join, label=label, keys=keys, index_unique=index_unique,
                merge=merge, uns_merge=merge,
            )  # fmt: skip
        except Exception as err:
            raise ConcatError(f"concat: anndata cannot combine the inputs: {err}") from None
    maps = column_maps(combined.var_names, [d.var.index for d in datasets])
    matrices = {
        path: [_matrix(d, path) for d in datasets] for path in ["X", *_common_layers(datasets)]
    }
    raw = _raw(datasets, combined, join, label, keys, index_unique)
    scratch_parent = None if is_url(output) else Path(output).resolve().parent
    with tempfile.TemporaryDirectory(prefix=".annlayout-concat-", dir=scratch_parent) as tmp:
        assembled = Path(tmp) / "assembled.zarr"
        _assemble(assembled, combined, matrices, maps, raw, budget, progress)
        result = apply(
            layout, assembled, output, overwrite=overwrite, memory=memory, verify=verify,
            progress=progress,
        )  # fmt: skip
    result.seconds = time.perf_counter() - start  # the assembly included
    return result


def _open(path: str | Path) -> Dataset:
    try:
        return open_dataset(path)
    except NotAnnDataError:
        raise
    except Exception as err:
        raise NotAnnDataError(f"{path}: cannot open: {str(err).splitlines()[0]}") from None


def _small_elements(data: Dataset) -> Any:
    """The input without its matrices: obs, var, obsm, varm, uns, as anndata.concat takes
    them."""
    try:
        return data.small_elements()
    except Exception as err:
        raise ConcatError(f"{data.source}: cannot read obs/var/obsm/uns: {err}") from None


def _common_layers(datasets: list[Dataset]) -> list[str]:
    names = [set(d.layers) for d in datasets]
    return [f"layers/{key}" for key in sorted(set.intersection(*names))] if names else []


def _matrix(data: Dataset, path: str) -> Any:
    return data.X if path == "X" else data.layers[path.split("/", 1)[1]]


def _raw(
    datasets: list[Dataset], combined: Any, join: Join, label: Any, keys: Any, index_unique: Any
) -> tuple[Any, list[Any], list[np.ndarray]] | None:
    """raw as ``anndata.concat`` combines it: only where every input has one, its var
    joined on its own, without merging columns. (combined raw without X, raw X per input,
    column maps)."""
    import anndata as ad
    import pandas as pd

    found = [d.raw for d in datasets]
    raws = [r for r in found if r is not None]
    if len(raws) < len(found):
        return None
    light = [
        ad.AnnData(obs=pd.DataFrame(index=d.obs.index), var=parts["var"], varm=parts.get("varm"))
        for d, (_, parts) in zip(datasets, raws, strict=True)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = ad.concat(light, join=join, label=label, keys=keys, index_unique=index_unique)
    matrices = [matrix for matrix, _ in raws]
    return raw, matrices, column_maps(raw.var_names, [parts["var"].index for _, parts in raws])


def _assemble(
    target: Path,
    combined: Any,
    matrices: dict[str, list[Any]],
    maps: list[np.ndarray],
    raw: tuple[Any, list[Any], list[np.ndarray]] | None,
    budget: int,
    progress: Progress | None,
) -> None:
    """The combined AnnData as a zarr store: small elements through anndata, each matrix
    appended in row blocks of about a quarter of ``budget``."""
    import anndata as ad
    import zarr

    root = zarr.open_group(target, mode="w", zarr_format=3)
    with warnings.catch_warnings(), writing():
        warnings.simplefilter("ignore")
        for key in ("obs", "var", "obsm", "varm", "varp", "uns"):
            value = getattr(combined, key)
            ad.experimental.write_elem(root, key, value if key in ("obs", "var") else dict(value))
        if raw is not None:
            raw_group = root.create_group("raw")
            raw_group.attrs.update({"encoding-type": "raw", "encoding-version": "0.1.0"})
            ad.experimental.write_elem(raw_group, "var", raw[0].var)
            ad.experimental.write_elem(raw_group, "varm", dict(raw[0].varm))
    root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    for path, present in matrices.items():
        if any(m is None for m in present):
            continue
        _write_matrix(root, path, present, maps, combined.n_vars, budget, progress)
    if raw is not None:
        _write_matrix(root, "raw/X", raw[1], raw[2], raw[0].n_vars, budget, progress)


def _write_matrix(
    root: Any,
    path: str,
    present: list[Any],
    maps: list[np.ndarray],
    n_vars: int,
    budget: int,
    progress: Progress | None,
) -> None:
    """One matrix of the inputs, stacked: CSR where any input is sparse (as anndata.concat
    makes it), dense where all are (absent columns NaN, its fill for dense arrays)."""
    dtype = np.result_type(*(m.dtype for m in present))
    n_obs = sum(m.shape[0] for m in present)
    dense = all(m.encoding not in SPARSE_ENCODINGS for m in present)
    if dense:
        if any((m < 0).any() for m in maps):  # outer join: anndata fills NaN
            dtype = np.result_type(dtype, np.float32)
        rows = max(1, min(n_obs, budget // 4 // max(1, n_vars * dtype.itemsize)))
        array = root.create_array(
            path, shape=(n_obs, n_vars), dtype=dtype, chunks=(rows, max(1, n_vars)),
            compressors=None,
        )  # fmt: skip
        array.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        at = 0
        for matrix, column_map in zip(present, maps, strict=True):
            kept = column_map >= 0
            for start in range(0, matrix.shape[0], rows):
                stop = min(matrix.shape[0], start + rows)
                block = matrix.rows(start, stop)
                if sp.issparse(block):
                    block = block.toarray()
                out = np.full((stop - start, n_vars), np.nan if dtype.kind == "f" else 0, dtype)
                out[:, column_map[kept]] = block[:, kept]
                array[at : at + stop - start] = out
                at += stop - start
        return
    group = root.create_group(path)
    group.attrs.update(
        {"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [n_obs, n_vars]}
    )
    data = _growing(group, "data", dtype)
    indices = _growing(group, "indices", np.int32 if n_vars < 2**31 else np.int64)
    indptr_parts = [np.zeros(1, dtype=np.int64)]
    offset = 0
    for number, (matrix, column_map) in enumerate(zip(present, maps, strict=True)):
        monotonic = is_monotonic(column_map)
        step = _rows_per_block(matrix, budget)
        for start in range(0, matrix.shape[0], step):
            block = sp.csr_matrix(matrix.rows(start, min(matrix.shape[0], start + step)))
            ptr, idx, val = remap_rows(
                block.indptr, block.indices, block.data, column_map, monotonic=monotonic
            )
            data.append(val.astype(dtype, copy=False))
            indices.append(idx.astype(indices.dtype, copy=False))
            indptr_parts.append(ptr[1:] + offset)
            offset += int(ptr[-1])
        if progress:
            progress(f"assembling {path}", number + 1, len(present))
    indptr = np.concatenate(indptr_parts)
    group.create_array("indptr", data=indptr, chunks=(SCRATCH_CHUNK,), compressors=None)


def _growing(group: Any, name: str, dtype: Any) -> Any:
    return group.create_array(
        name, shape=(0,), dtype=dtype, chunks=(SCRATCH_CHUNK,), compressors=None
    )


def _rows_per_block(matrix: Any, budget: int) -> int:
    """Rows whose nonzeros (value, index, row id, sort order: about 28 bytes each, twice
    while remapping) fill a quarter of the budget."""
    n_obs = matrix.shape[0]
    per_row = max(1.0, matrix.nnz / max(1, n_obs)) * 28 * 2
    return max(1, int(budget / 4 / per_row))
