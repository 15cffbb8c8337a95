"""The readers a benchmark compares, and the digest that checks their answers.

annlayout's reader and anndata's lazy readers: ``sparse_dataset`` through each of zarr's two
codec pipelines (zarrs, the Rust one, and zarr-python's own: which one decodes chunks changes
anndata's speed more than most layout choices) and ``read_lazy``. Each is opened once per
store with what it reads once per handle done, then called once per operation. Every answer
is digested so answers can be compared across candidates and readers.

Training patterns are read by loaders instead (:data:`LOADERS`): annlayout's
``Dataset.batches`` and annbatch's ``Loader`` (when installed; zarr stores only), with the
same block, buffer and batch size (:func:`open_loader`).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from annlayout.base.optional import installed, requirement
from annlayout.bench.workloads import Operation
from annlayout.format.encodings import encoding_spec
from annlayout.storage.pipeline import codec_pipeline

#: the readers of every pattern but training's (selections: X[rows, cols], obs columns)
ROW_READERS = ("annlayout", "sparse_dataset-zarrs", "sparse_dataset-zarr", "read_lazy")
#: the readers of training patterns: loaders (annlayout's ``batches``, annbatch's ``Loader``)
LOADERS = ("annlayout", "annbatch")
READERS = (*ROW_READERS, "annbatch")
#: the zarr codec pipeline (annlayout.storage.pipeline.CODEC_PIPELINES) each sparse_dataset reader uses
PIPELINES = {"sparse_dataset-zarrs": "zarrs", "sparse_dataset-zarr": "zarr"}


def not_installed() -> dict[str, str]:
    """The readers whose extra is missing, each with the one line that says how to get it."""
    out = {}
    if missing := requirement("bench", "anndata's read_lazy"):
        out["read_lazy"] = missing
    if not installed("zarrs"):
        out["sparse_dataset-zarrs"] = "the zarrs codec pipeline needs zarrs: pip install zarrs"
    if not installed("annbatch"):
        out["annbatch"] = (
            "annbatch's Loader needs annbatch (Python 3.12 or later): pip install annbatch"
        )
    return out


def reads(reader: str, kind: str) -> bool:
    """Whether ``reader`` reads patterns of ``kind``: loaders read training patterns, the
    other readers the rest (annlayout's reader and loader both)."""
    return reader in (LOADERS if kind == "training" else ROW_READERS)


Read = Callable[[Operation], Any]


def open_handle(source: Any) -> Any:
    import annlayout

    return annlayout.open(source)


def open_reader(kind: str, source: Any) -> Read | None:
    """A reader opened once, with what it reads once per handle (indexes, indptrs) done."""
    if kind in PIPELINES:
        return _sparse_dataset_reader(source, PIPELINES[kind])
    if kind == "read_lazy":
        return _read_lazy_reader(source)
    handle = open_handle(source)
    if handle.X is not None and handle.X.sparse:
        handle.X.warm()  # indptrs and shard indexes: read once per open handle, untimed
    return _annlayout_reader(handle)


def _annlayout_reader(handle: Any) -> Read:
    def read(op: Operation) -> Any:
        if op.column is not None:
            return handle.obs[op.column].to_numpy()
        return handle.X[op.rows, op.cols]

    return read


def _zarr_group(store: Any) -> Any:
    import zarr

    if isinstance(store, Path | str):
        return zarr.open_group(str(store), mode="r")
    return zarr.open_group(store=store, mode="r")


def _sorted_rows(rows: Any, read: Callable[[Any], Any]) -> sp.csr_matrix:
    """anndata's readers want sorted rows: read sorted, then put them back in order."""
    if not isinstance(rows, np.ndarray):
        return sp.csr_matrix(read(rows))
    order = np.argsort(rows, kind="stable")
    return sp.csr_matrix(read(rows[order]))[np.argsort(order)]


def _sparse_dataset_reader(store: Any, pipeline: str) -> Read | None:
    """anndata's sparse_dataset with zarr's ``pipeline`` (a zarr array takes the pipeline
    configured when it is opened; anndata may open arrays per read, so reads run in it too)."""
    if pipeline == "zarrs" and not installed("zarrs"):
        return None
    import anndata as ad
    from anndata.io import read_elem

    with codec_pipeline(pipeline):
        group = _zarr_group(store)
        if not encoding_spec(group["X"], "X").sparse:
            return None
        matrix = ad.io.sparse_dataset(group["X"])

    def read(op: Operation) -> Any:
        with codec_pipeline(pipeline):
            if op.column is not None:
                return np.asarray(read_elem(group["obs"][op.column]))
            if isinstance(op.rows, np.ndarray) or isinstance(op.cols, slice):
                return _sorted_rows(op.rows, lambda rows: matrix[rows])[:, op.cols]
            return sp.csr_matrix(matrix[op.rows, op.cols])

    return read


def _read_lazy_reader(store: Any) -> Read | None:
    """anndata's read_lazy; None (not measured) when dask or xarray is not installed."""
    if "read_lazy" in not_installed():
        return None
    import anndata as ad

    group = _zarr_group(store)
    if not encoding_spec(group["X"], "X").sparse:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lazy = ad.experimental.read_lazy(group)
    x: Any = lazy.X  # a dask array (anndata types X as any array an AnnData can hold)

    def read(op: Operation) -> Any:
        if op.column is not None:
            return np.asarray(lazy.obs[op.column])
        block = _sorted_rows(op.rows, lambda rows: x[rows].compute())
        return block[:, op.cols]

    return read


def answer_digest(answer: Any) -> str:
    """sha256 of an answer: a sparse one canonical (duplicates summed, indices sorted)."""
    digest = hashlib.sha256()
    if sp.issparse(answer):
        matrix = sp.csr_matrix(answer)
        matrix.sum_duplicates()
        matrix.sort_indices()
        digest.update(str(matrix.shape).encode())
        for part in (matrix.indptr, matrix.indices):
            digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(matrix.data, dtype=np.float64).tobytes())
    else:
        values = np.asarray(answer)
        digest.update(str(values.shape).encode())
        digest.update(
            repr(values.astype(str).tolist()).encode()
            if values.dtype.kind in "OUT"
            else np.ascontiguousarray(values).tobytes()
        )
    return digest.hexdigest()


#: one round of a loader: round number -> its batches, each (store positions, X); the
#: loader is made (and its store opened) when called, before the round's clock starts
Epoch = Callable[[int], Iterable[tuple[np.ndarray, Any]]]


def loader_refusal(kind: str, location: Any) -> str | None:
    """Why ``kind`` cannot replay a loader epoch on the store at ``location`` (None: it can):
    its package is missing, or (annbatch) the store is not zarr."""
    if kind in (missing := not_installed()):
        return missing[kind]
    if kind == "annbatch" and str(location).endswith(".h5ad"):
        return "annbatch's Loader reads zarr stores only, not h5ad"
    return None


def open_loader(
    kind: str, source: Any, batch_size: int, block: int | None, buffer: int, seed: int
) -> Epoch:
    """A loader over ``source`` with the same settings whatever ``kind``: batches of
    ``batch_size``, blocks of ``block`` contiguous rows (None: annlayout's loader reads the
    store's own chunks; annbatch needs a number), ``buffer`` blocks read together and
    shuffled in memory, an order drawn from ``seed`` and the round."""
    if kind == "annbatch":
        return _annbatch_epoch(source, batch_size, block or 512, buffer, seed)
    handle = open_handle(source)

    def epoch(number: int) -> Iterable[tuple[np.ndarray, Any]]:
        batches = handle.batches(
            batch_size, shuffle=True, seed=seed, epoch=number, block=block, buffer=buffer
        )
        return ((batch.index, batch.X) for batch in batches)

    return epoch


def _annbatch_epoch(source: Any, batch_size: int, block: int, buffer: int, seed: int) -> Epoch:
    """annbatch's ``Loader`` (``chunk_size`` = block, ``preload_nchunks`` = buffer, CPU
    output, indexes returned) over the store's X: a sparse one through anndata's
    ``sparse_dataset``, a dense one as its zarr array."""
    import annbatch
    import anndata as ad

    group = _zarr_group(source)
    dense = not encoding_spec(group["X"], "X").sparse

    def epoch(number: int) -> Iterable[tuple[np.ndarray, Any]]:
        loader = annbatch.Loader(
            batch_size=batch_size, chunk_size=block, preload_nchunks=buffer, shuffle=True,
            rng=np.random.default_rng([seed, number]), return_index=True,
            preload_to_gpu=False,
        )  # fmt: skip
        loader.add_dataset(group["X"] if dense else ad.io.sparse_dataset(group["X"]))
        return ((np.asarray(batch["index"]), batch["X"]) for batch in loader)

    return epoch
