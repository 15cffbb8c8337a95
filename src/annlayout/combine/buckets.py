"""Rows moved to new positions out of core: the one bucketed reorder, through files.

A permutation of a matrix bigger than memory cannot be gathered row by row from the inputs
(a million random reads). Instead the rows stream past once, in input order, and each is
appended to the file of the bucket its new position falls in (bucket ``b`` holds the new
positions ``edges[b]:edges[b + 1]``); then each bucket, small enough for memory, is read back
whole, its rows put in their final order (:func:`~annlayout.combine.collection.in_new_order`),
and handed on. Every read and write is sequential, and memory holds one input block or one
bucket. concat's serial path (``--shuffle``, ``--groupby``) drains its buckets itself; on dask
(:mod:`annlayout.combine.assembly`) each scatter task spools its blocks through
:class:`RowBuckets` and hands its buckets' files to the gather tasks, which order them the same
way.

Everything the buckets hold is in their files (each row's new position and length too, in
``rows.bin``), only ever appended to; so :meth:`RowBuckets.files` taken after a block is a
checkpoint, and a run killed later resumes from it (``restore=``): files cut back to those
sizes, the rows after them added again.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from annlayout.base.errors import IntegrityError
from annlayout.combine.collection import by_bucket, in_new_order


def equal_edges(n_rows: int, rows_per_bucket: int) -> np.ndarray:
    """Buckets of ``rows_per_bucket`` new positions each (the last may be short; one empty
    bucket where there are no rows): the ``n_buckets + 1`` edges."""
    starts = np.arange(0, n_rows, max(1, rows_per_bucket), dtype=np.int64)
    return np.append(starts if starts.size else np.zeros(1, np.int64), n_rows)


def bucket_of(edges: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """The bucket each new position in ``ranks`` falls in."""
    return np.searchsorted(edges, ranks, side="right") - 1


class RowBuckets:
    """Rows of one matrix on their way to new positions, in the buckets ``edges`` bounds
    (:func:`equal_edges`, or any increasing edges). Sparse rows (``add_csr``) or dense ones
    (``add_dense``), not both, each with its new position; ``drain`` yields the buckets in
    order, rows sorted, and every new position of a bucket must have arrived once.
    ``restore``: the :meth:`files` of an earlier run in ``directory`` to continue from (else
    it starts empty); ``dtypes`` (name -> dtype of the values) must be given for it."""

    def __init__(
        self,
        directory: Path,
        edges: np.ndarray,
        *,
        restore: dict[str, int] | None = None,
        dtypes: dict[str, str] | None = None,
    ):
        self.directory = directory
        self.edges = np.asarray(edges, dtype=np.int64)
        self.n_buckets = self.edges.size - 1
        self._ranks: list[list[np.ndarray]] = [[] for _ in range(self.n_buckets)]
        self._lengths: list[list[np.ndarray]] = [[] for _ in range(self.n_buckets)]
        self._dtypes: dict[str, np.dtype] = {k: np.dtype(v) for k, v in (dtypes or {}).items()}
        self._row_shape: tuple[int, ...] = ()
        if restore is None:
            shutil.rmtree(directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        if restore is not None:
            self._restore(restore)

    @property
    def dtypes(self) -> dict[str, str]:
        return {name: dtype.str for name, dtype in self._dtypes.items()}

    def files(self) -> dict[str, int]:
        """name -> size of every file the buckets hold: a checkpoint for ``restore``."""
        return {entry.name: entry.stat().st_size for entry in os.scandir(self.directory)}

    def _restore(self, files: dict[str, int]) -> None:
        for entry in os.scandir(self.directory):
            if entry.name not in files:
                os.unlink(entry.path)  # written after the checkpoint
            elif entry.stat().st_size > files[entry.name]:
                os.truncate(entry.path, files[entry.name])
        pairs = np.fromfile(self.directory / "rows.bin", dtype=np.int64).reshape(-1, 2)
        buckets = bucket_of(self.edges, pairs[:, 0])
        order = np.argsort(buckets, kind="stable")  # each bucket's rows in the order they came
        bounds = np.searchsorted(buckets[order], np.arange(self.n_buckets + 1))
        for bucket in range(self.n_buckets):
            rows = pairs[order[bounds[bucket] : bounds[bucket + 1]]]
            self._ranks[bucket] = [rows[:, 0]]
            self._lengths[bucket] = [rows[:, 1]]

    def add_csr(
        self, ranks: np.ndarray, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray
    ) -> None:
        """Rows as CSR, ``ranks`` their new positions."""
        order, ptr, idx, val, _ = by_bucket(
            bucket_of(self.edges, ranks), self.n_buckets, indptr, indices, data
        )
        self._split(ranks[order], ptr, {"indices": idx, "data": val})

    def add_dense(self, ranks: np.ndarray, block: np.ndarray) -> None:
        """Rows of a dense block, ``ranks`` their new positions."""
        order = np.argsort(bucket_of(self.edges, ranks), kind="stable")
        self._row_shape = block.shape[1:]
        per_row = int(np.prod(self._row_shape, dtype=np.int64))
        ptr = np.arange(ranks.size + 1, dtype=np.int64) * per_row
        self._split(ranks[order], ptr, {"data": block[order].reshape(-1)})

    def _split(self, ranks: np.ndarray, ptr: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        """Rows grouped by bucket (``ranks`` in bucket order) appended to their buckets."""
        buckets = bucket_of(self.edges, ranks)
        bounds = np.searchsorted(buckets, np.arange(self.n_buckets + 1))
        for name, values in arrays.items():
            self._dtypes[name] = values.dtype
        for bucket in np.unique(buckets):
            lo, hi = bounds[bucket], bounds[bucket + 1]
            self._ranks[bucket].append(ranks[lo:hi])
            self._lengths[bucket].append(np.diff(ptr[lo : hi + 1]))
            for name, values in arrays.items():
                with open(self.file(bucket, name), "ab") as out:
                    values[ptr[lo] : ptr[hi]].tofile(out)
        # last: a checkpoint's rows.bin never names values that are not in the files yet
        pairs = np.column_stack([ranks, np.diff(ptr)]).astype(np.int64)
        with open(self.directory / "rows.bin", "ab") as out:
            pairs.tofile(out)

    def file(self, bucket: int, name: str) -> Path:
        """The file of a bucket's ``indices`` or ``data``."""
        return self.directory / f"{bucket:06d}.{name}"

    def _read(self, bucket: int, name: str, expected: int) -> np.ndarray:
        """``expected`` values of a bucket's file (none: it may never have been made)."""
        path = self.file(bucket, name)
        if not expected:
            return np.empty(0, dtype=self._dtypes.get(name, np.float32))
        values = np.fromfile(path, dtype=self._dtypes[name])
        if values.size != expected:
            raise IntegrityError(f"{path}: {values.size} values, {expected} expected")
        return values

    def discard(self, bucket: int) -> None:
        """A bucket's files, once its rows are written: the disk is given back as the
        shuffle proceeds (not on reading it, so a run killed meanwhile can read it again)."""
        for name in ("indices", "data"):
            self.file(bucket, name).unlink(missing_ok=True)

    def drain_csr(self, first: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per bucket from ``first`` on, in order: (indptr, indices, data) of its rows in
        their new order."""
        for bucket in range(first, self.n_buckets):
            ranks, lengths = self._take(bucket)
            nnz = int(lengths.sum())
            indices, data = self._read(bucket, "indices", nnz), self._read(bucket, "data", nnz)
            start, stop = int(self.edges[bucket]), int(self.edges[bucket + 1])
            yield in_new_order(ranks, lengths, indices, data, start, stop - start, bucket)

    def drain_dense(self) -> Iterator[np.ndarray]:
        for bucket in range(self.n_buckets):
            ranks, _ = self._take(bucket)
            per_row = int(np.prod(self._row_shape, dtype=np.int64))
            values = self._read(bucket, "data", ranks.size * per_row)
            block = values.reshape(ranks.size, *self._row_shape)
            yield block[np.argsort(ranks, kind="stable")]
            self.discard(bucket)

    def held(self, bucket: int) -> tuple[np.ndarray, np.ndarray]:
        """A bucket's rows as they arrived: each one's new position and its values (a part of
        the bucket where others hold the rest: a scatter task's)."""
        ranks = np.concatenate(self._ranks[bucket] or [np.empty(0, np.int64)])
        lengths = np.concatenate(self._lengths[bucket] or [np.empty(0, np.int64)])
        return ranks.astype(np.int64, copy=False), lengths.astype(np.int64, copy=False)

    def _take(self, bucket: int) -> tuple[np.ndarray, np.ndarray]:
        ranks, lengths = self.held(bucket)
        self._ranks[bucket], self._lengths[bucket] = [], []
        expected = int(self.edges[bucket + 1] - self.edges[bucket])
        if ranks.size != expected:  # every new position arrives exactly once
            raise IntegrityError(f"bucket {bucket}: {ranks.size} rows arrived, {expected} expected")
        return ranks, lengths
