"""Rows moved to new positions out of core: a bucketed two-pass shuffle through files.

A permutation of a matrix bigger than memory cannot be gathered row by row from the inputs
(a million random reads). Instead the rows stream past once, in input order, and each is
appended to the file of the bucket its new position falls in (bucket ``b`` holds the new
positions ``b * rows_per_bucket`` onwards); then each bucket, small enough for memory, is
read back whole, its rows put in their final order, and handed on. Every read and write is
sequential, and memory holds one input block or one bucket.

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


class RowBuckets:
    """Rows of one matrix on their way to the positions ``rank`` gives them (``rank[r]``:
    the new position of row ``r``). Sparse rows (``add_csr``) or dense ones (``add_dense``),
    not both; ``drain`` yields the buckets in order, rows sorted. ``restore``: the
    :meth:`files` of an earlier run in ``directory`` to continue from (else it starts empty);
    ``dtypes`` (name -> dtype of the values) must be given for it."""

    def __init__(
        self,
        directory: Path,
        rank: np.ndarray,
        rows_per_bucket: int,
        *,
        restore: dict[str, int] | None = None,
        dtypes: dict[str, str] | None = None,
    ):
        self.directory = directory
        self.rank = rank
        self.rows_per_bucket = max(1, rows_per_bucket)
        self.n_buckets = max(1, -(-rank.size // self.rows_per_bucket))
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
        buckets = pairs[:, 0] // self.rows_per_bucket
        order = np.argsort(buckets, kind="stable")  # each bucket's rows in the order they came
        bounds = np.searchsorted(buckets[order], np.arange(self.n_buckets + 1))
        for bucket in range(self.n_buckets):
            rows = pairs[order[bounds[bucket] : bounds[bucket + 1]]]
            self._ranks[bucket] = [rows[:, 0]]
            self._lengths[bucket] = [rows[:, 1]]

    def add_csr(
        self, first_row: int, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray
    ) -> None:
        """Rows ``first_row:first_row + len(indptr) - 1`` of the matrix, as CSR."""
        rows = np.arange(first_row, first_row + indptr.size - 1)
        buckets = self.rank[rows] // self.rows_per_bucket
        order, ptr, idx, val, _ = by_bucket(buckets, self.n_buckets, indptr, indices, data)
        self._split(rows[order], ptr, {"indices": idx, "data": val})

    def add_dense(self, first_row: int, block: np.ndarray) -> None:
        rows = np.arange(first_row, first_row + block.shape[0])
        order = np.argsort(self.rank[rows] // self.rows_per_bucket, kind="stable")
        self._row_shape = block.shape[1:]
        per_row = int(np.prod(self._row_shape, dtype=np.int64))
        ptr = np.arange(rows.size + 1, dtype=np.int64) * per_row
        self._split(rows[order], ptr, {"data": block[order].reshape(-1)})

    def _split(self, rows: np.ndarray, ptr: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        buckets = self.rank[rows] // self.rows_per_bucket
        bounds = np.searchsorted(buckets, np.arange(self.n_buckets + 1))
        for name, values in arrays.items():
            self._dtypes[name] = values.dtype
        for bucket in np.unique(buckets):
            lo, hi = bounds[bucket], bounds[bucket + 1]
            self._ranks[bucket].append(self.rank[rows[lo:hi]])
            self._lengths[bucket].append(np.diff(ptr[lo : hi + 1]))
            for name, values in arrays.items():
                with open(self._file(bucket, name), "ab") as out:
                    values[ptr[lo] : ptr[hi]].tofile(out)
        # last: a checkpoint's rows.bin never names values that are not in the files yet
        pairs = np.column_stack([self.rank[rows], np.diff(ptr)]).astype(np.int64)
        with open(self.directory / "rows.bin", "ab") as out:
            pairs.tofile(out)

    def _file(self, bucket: int, name: str) -> Path:
        return self.directory / f"{bucket:06d}.{name}"

    def _read(self, bucket: int, name: str, expected: int) -> np.ndarray:
        """``expected`` values of a bucket's file (none: it may never have been made)."""
        path = self._file(bucket, name)
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
            self._file(bucket, name).unlink(missing_ok=True)

    def drain_csr(self, first: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per bucket from ``first`` on, in order: (indptr, indices, data) of its rows in
        their new order."""
        for bucket in range(first, self.n_buckets):
            ranks, lengths = self._take(bucket)
            nnz = int(lengths.sum())
            indices, data = self._read(bucket, "indices", nnz), self._read(bucket, "data", nnz)
            start = bucket * self.rows_per_bucket
            yield in_new_order(ranks, lengths, indices, data, start, ranks.size, bucket)

    def drain_dense(self) -> Iterator[np.ndarray]:
        for bucket in range(self.n_buckets):
            ranks, _ = self._take(bucket)
            per_row = int(np.prod(self._row_shape, dtype=np.int64))
            values = self._read(bucket, "data", ranks.size * per_row)
            block = values.reshape(ranks.size, *self._row_shape)
            yield block[np.argsort(ranks, kind="stable")]
            self.discard(bucket)

    def _take(self, bucket: int) -> tuple[np.ndarray, np.ndarray]:
        ranks = np.concatenate(self._ranks[bucket] or [np.empty(0, np.int64)])
        lengths = np.concatenate(self._lengths[bucket] or [np.empty(0, np.int64)])
        self._ranks[bucket], self._lengths[bucket] = [], []
        first = bucket * self.rows_per_bucket
        expected = min(self.rank.size, first + self.rows_per_bucket) - first
        if ranks.size != expected:  # every new position arrives exactly once
            raise IntegrityError(f"bucket {bucket}: {ranks.size} rows arrived, {expected} expected")
        return ranks, lengths
