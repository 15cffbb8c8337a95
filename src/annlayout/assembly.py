"""One sparse matrix of many inputs combined by independent tasks, for dask: concat's
combining phase (and its shuffle) on ``--workers`` or a ``--scheduler``'s cluster.

The serial path (:func:`annlayout.concatenate._write_matrix`) appends row blocks in order,
which one process must do. Here the rows take two passes through files, each made of tasks
that share nothing but a directory the driver and every worker see:

- **scatter**, one task per input row block: read the rows (by the input's location), move
  them onto the result's columns, split them by the bucket of new positions they go to, and
  write them, bucket after bucket, to the task's own files with each bucket's bounds;
- **gather**, one task per bucket: read the bucket's rows from every scatter task's files,
  put them in their final order and write them into the combined arrays (created with their
  final shapes once the scatter told every bucket's size). A bucket writes the chunks it
  covers whole; the pieces of the chunks it shares with its neighbours go to a file, and the
  driver writes those chunks last, so no chunk is written by two tasks.

Without a new order, a row's new position is its place in the stack, so a scatter task's rows
fall into one or two buckets. Every task writes its files under a temporary name and renames
the last one into place, so a task whose last file exists is done, and a resumed run skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from annlayout.codecs import codec_pipeline
from annlayout.reader import Dataset, Matrix
from annlayout.reader import open as open_dataset
from annlayout.rewrite.collection import is_monotonic, remap_rows, reorder_csr, rows_per_block
from annlayout.rewrite.execute import Executor, Threads, execute

Progress = Callable[[str, int, int], None]
SCRATCH_CHUNK = 2**20  # values per chunk of the combined arrays (uncompressed)


@dataclass(frozen=True)
class Source:
    """One input's matrix, as a task finds it: the input's location (absolute for a local
    path: workers' working directories differ) and the element (``X``, ``layers/NAME``,
    ``raw/X``)."""

    location: str
    element: str


def source_matrix(source: Source) -> Matrix:
    dataset = _opened(*_signature(source.location))
    if source.element == "X":
        matrix = dataset.X
    elif source.element == "raw/X":
        matrix = dataset.raw[0] if dataset.raw is not None else None  # type: ignore[assignment]
    else:
        matrix = dataset.layers.get(source.element.split("/", 1)[1])
    if not isinstance(matrix, Matrix):
        raise ValueError(f"{source.location}: no stored {source.element} to combine")
    return matrix


def _signature(location: str) -> tuple[str, int | None]:
    """A local input is opened again once it changed (a long-lived worker, a rewritten file)."""
    try:
        return location, os.stat(location).st_mtime_ns
    except OSError:  # a URL
        return location, None


_open_lock = threading.Lock()


@cache
def _dataset(location: str, mtime: int | None) -> Dataset:
    """Each input opened once per process: its indptr is then read once, not per task."""
    return open_dataset(location)


def _opened(location: str, mtime: int | None) -> Dataset:
    with _open_lock:
        return _dataset(location, mtime)


# --------------------------------------------------------------------------- scatter


@dataclass(frozen=True)
class ScatterTask:
    """Rows ``start:stop`` of ``source``, the stack's rows ``first`` onwards, into buckets of
    ``rows_per_bucket`` new positions (``rank``: the new position of each of its rows; None:
    its place in the stack). Its files go to ``directory``."""

    source: Source
    column_map: np.ndarray
    monotonic: bool
    start: int
    stop: int
    first: int
    rank: np.ndarray | None
    rows_per_bucket: int
    n_buckets: int
    dtypes: tuple[str, str]  # of the combined indices and data
    directory: str
    nbytes: int  # the values it moves (for progress)

    @property
    def done(self) -> bool:
        return (Path(self.directory) / "bounds.npy").exists()

    def run(self, advance: Callable[[int], None] | None = None) -> int:
        import scipy.sparse as sp

        matrix = source_matrix(self.source)
        block = sp.csr_matrix(matrix.rows(self.start, self.stop))
        ptr, idx, val = remap_rows(
            block.indptr, block.indices, block.data, self.column_map, monotonic=self.monotonic
        )
        del block
        index_dtype, data_dtype = map(np.dtype, self.dtypes)
        idx, val = idx.astype(index_dtype, copy=False), val.astype(data_dtype, copy=False)
        n_rows = self.stop - self.start
        rank = self.rank if self.rank is not None else np.arange(self.first, self.first + n_rows)
        bucket = rank // self.rows_per_bucket
        by_bucket = np.argsort(bucket, kind="stable")
        ptr, idx, val = reorder_csr(ptr, idx, val, by_bucket)
        row_bounds = np.searchsorted(bucket[by_bucket], np.arange(self.n_buckets + 1))
        bounds = np.stack([row_bounds, ptr[row_bounds]]).astype(np.int64)
        rows = np.column_stack([rank[by_bucket], np.diff(ptr)]).astype(np.int64)
        directory = Path(self.directory)
        shutil.rmtree(directory, ignore_errors=True)  # a killed run's part files
        directory.mkdir(parents=True)
        for name, values in (("rows", rows), ("indices", idx), ("data", val), ("bounds", bounds)):
            _save(directory / f"{name}.npy", values)  # bounds last: the task is done
        if advance:
            advance(self.nbytes)
        return self.nbytes


def _save(path: Path, values: np.ndarray) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as out:
        np.save(out, values)
    partial.replace(path)


# --------------------------------------------------------------------------- gather


@dataclass(frozen=True)
class Part:
    """A bucket's rows in one scatter task's files: rows ``rows[0]:rows[1]`` of its rows
    file, nonzeros ``values[0]:values[1]`` of its indices and data."""

    directory: str
    rows: tuple[int, int]
    values: tuple[int, int]


@dataclass(frozen=True)
class GatherTask:
    """Bucket ``bucket``: the new positions ``first_row`` onwards, the nonzeros ``first_value``
    onwards, from ``parts``, written into the CSR group at ``group`` (a local zarr path)."""

    bucket: int
    parts: tuple[Part, ...]
    first_row: int
    n_rows: int
    first_value: int
    group: str
    pieces: str  # the file of the pieces of chunks it shares
    nbytes: int

    @property
    def done(self) -> bool:
        return Path(self.pieces).exists()

    def run(self, advance: Callable[[int], None] | None = None) -> int:
        read: dict[str, list[np.ndarray]] = {"rows": [], "indices": [], "data": []}
        for part in self.parts:
            for name, (lo, hi) in (("rows", part.rows), ("indices", part.values),
                                   ("data", part.values)):  # fmt: skip
                stored = np.load(Path(part.directory) / f"{name}.npy", mmap_mode="r")
                read[name].append(np.array(stored[lo:hi]))  # only these bytes are read
        arrays = _open_group(self.group)
        rows = np.concatenate(read["rows"]) if read["rows"] else np.empty((0, 2), np.int64)
        rank, lengths = rows[:, 0], rows[:, 1]
        if rank.size != self.n_rows:  # every new position arrives exactly once
            raise RuntimeError(f"bucket {self.bucket}: {rank.size} rows, {self.n_rows} expected")
        indptr = np.zeros(rank.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        indices, data = (
            np.concatenate(read[name]) if read[name] else np.empty(0, arrays[name].dtype)
            for name in ("indices", "data")
        )
        ptr, idx, val = reorder_csr(indptr, indices, data, np.argsort(rank, kind="stable"))
        skip = 0 if self.bucket == 0 else 1  # the first bucket writes indptr[0] too
        starts = {
            "indptr": (self.first_row + skip, ptr[skip:] + self.first_value),
            "indices": (self.first_value, idx),
            "data": (self.first_value, val),
        }
        pieces: dict[str, np.ndarray] = {}
        for name, (start, values) in starts.items():
            for number, (at, piece) in enumerate(write_whole_chunks(arrays[name], start, values)):
                pieces[f"{name}.{number}.{at}"] = piece
        partial = Path(self.pieces + ".partial")
        with open(partial, "wb") as out:
            np.savez(out, **pieces)  # type: ignore[arg-type]
        partial.replace(self.pieces)
        if advance:
            advance(self.nbytes)
        return self.nbytes


def _open_group(path: str) -> dict[str, Any]:
    import zarr

    with _open_lock, codec_pipeline("zarrs"):  # local and uncompressed: zarrs writes faster
        return {
            name: zarr.open_array(f"{path}/{name}", mode="r+")
            for name in ("indptr", "indices", "data")
        }


def write_whole_chunks(array: Any, start: int, values: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``values`` written at ``start`` of a 1-D ``array`` where they cover a chunk whole; the
    pieces of the chunks they cover in part are returned ((position, values) each), for
    whoever writes those chunks whole."""
    chunk, size, stop = int(array.chunks[0]), int(array.shape[0]), start + values.size
    lo = -(-start // chunk) * chunk
    hi = stop if stop == size else stop // chunk * chunk
    if lo >= hi:
        return [(start, values)] if values.size else []
    array[lo:hi] = values[lo - start : hi - start]
    pieces = []
    if start < lo:
        pieces.append((start, values[: lo - start]))
    if hi < stop:
        pieces.append((hi, values[hi - start :]))
    return pieces


def write_pieces(array: Any, pieces: Iterator[tuple[int, np.ndarray]]) -> None:
    """Chunks put together from ``pieces`` (in position order, each within one chunk) and
    written whole, one at a time."""
    chunk, size = int(array.chunks[0]), int(array.shape[0])
    current, at = -1, 0  # the chunk being filled, where it is filled to
    parts: list[np.ndarray] = []
    for position, values in pieces:
        number = position // chunk
        if number != current:
            if parts:
                raise RuntimeError(f"{array.name}: chunk {current} is incomplete")
            current, at = number, number * chunk
        if position != at:
            raise RuntimeError(f"{array.name}: values {at} to {position} are missing")
        parts.append(values)
        at += values.size
        if at == min(size, (number + 1) * chunk):
            array[number * chunk : at] = np.concatenate(parts)
            parts = []
    if parts:
        raise RuntimeError(f"{array.name}: chunk {current} is incomplete")


# --------------------------------------------------------------------------- driver


def assemble_sparse(
    target: Path,
    path: str,
    sources: Sequence[Source],
    matrices: Sequence[Any],
    maps: Sequence[np.ndarray],
    n_vars: int,
    dtype: np.dtype,
    rank: np.ndarray | None,
    budget: int,
    executor: Executor,
    directory: Path,
    progress: Progress | None = None,
) -> None:
    """The inputs' ``matrices`` (read again by the tasks from ``sources``) stacked into the CSR
    group ``path`` of the zarr v3 store at ``target`` (local), rows moved to
    ``rank`` if given. ``budget`` is shared by the executor's workers; the tasks' files go
    to ``directory``, which a resumed run finds as the killed one left it."""
    import zarr

    workers = executor.workers if isinstance(executor, Threads) else 1
    per_task = max(1, budget // max(1, workers))
    n_obs = sum(int(m.shape[0]) for m in matrices)
    nnz = sum(int(m.nnz) for m in matrices)
    per_bucket = rows_per_block(nnz, n_obs, per_task)
    n_buckets = max(1, -(-n_obs // per_bucket))
    index_dtype = np.dtype(np.int32 if n_vars < 2**31 else np.int64)
    dtypes = (index_dtype.str, np.dtype(dtype).str)

    scatter: list[ScatterTask] = []
    first = 0
    for number, (source, matrix, column_map) in enumerate(
        zip(sources, matrices, maps, strict=True)
    ):
        n_rows, monotonic = int(matrix.shape[0]), is_monotonic(column_map)
        step = rows_per_block(int(matrix.nnz), n_rows, per_task)
        for start in range(0, n_rows, step):
            stop = min(n_rows, start + step)
            scatter.append(ScatterTask(
                source, column_map, monotonic, start, stop, first + start,
                None if rank is None else rank[first + start : first + stop],
                per_bucket, n_buckets, dtypes,
                str(directory / "scatter" / f"{number:05d}-{start:012d}"),
                int(matrix.nnz * (stop - start) // max(1, n_rows)) * (4 + dtype.itemsize),
            ))  # fmt: skip
        first += n_rows
    plan = json.dumps({
        "tasks": [[t.source.location, t.source.element, t.start, t.stop] for t in scatter],
        "rows_per_bucket": per_bucket, "ordered": rank is not None, "dtypes": dtypes,
    })  # fmt: skip
    if not (directory / "plan.json").exists() or (directory / "plan.json").read_text() != plan:
        shutil.rmtree(directory, ignore_errors=True)  # made by another plan: started again
        directory.mkdir(parents=True)
        (directory / "plan.json").write_text(plan)

    execute([t for t in scatter if not t.done], executor, _phase(progress, "scattering", path))

    row_bounds = np.zeros(n_buckets, dtype=np.int64)
    value_counts = np.zeros(n_buckets, dtype=np.int64)
    bounds = [np.load(Path(t.directory) / "bounds.npy") for t in scatter]
    for b in bounds:
        row_bounds += np.diff(b[0])
        value_counts += np.diff(b[1])
    total = int(value_counts.sum())
    first_values = np.concatenate([[0], np.cumsum(value_counts)])

    created = directory / "arrays.json"
    shape = json.dumps({"n_obs": n_obs, "nnz": total})
    if not created.exists() or created.read_text() != shape:
        group = zarr.open_group(target, mode="r+").create_group(path, overwrite=True)
        group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                            "shape": [n_obs, n_vars]})  # fmt: skip
        for name, length, array_dtype in (
            ("data", total, dtype), ("indices", total, index_dtype),
            ("indptr", n_obs + 1, np.int64),
        ):  # fmt: skip
            group.create_array(name, shape=(length,), dtype=array_dtype,
                               chunks=(SCRATCH_CHUNK,), compressors=None)  # fmt: skip
        for stale in (directory / "gather").glob("*.npz"):  # written into the old arrays
            stale.unlink()
        created.write_text(shape)

    (directory / "gather").mkdir(exist_ok=True)
    gather = []
    for bucket in range(n_buckets):
        first_row = bucket * per_bucket
        parts = tuple(
            Part(t.directory, (int(b[0, bucket]), int(b[0, bucket + 1])),
                 (int(b[1, bucket]), int(b[1, bucket + 1])))
            for t, b in zip(scatter, bounds, strict=True)
            if b[0, bucket + 1] > b[0, bucket]
        )  # fmt: skip
        gather.append(GatherTask(
            bucket, parts, first_row, min(n_obs, first_row + per_bucket) - first_row,
            int(first_values[bucket]), str(target / path),
            str(directory / "gather" / f"{bucket:06d}.npz"),
            int(value_counts[bucket]) * (4 + dtype.itemsize),
        ))  # fmt: skip
    if int(row_bounds.sum()) != n_obs:
        raise RuntimeError(f"{path}: {int(row_bounds.sum())} rows scattered, {n_obs} expected")
    execute([t for t in gather if not t.done], executor, _phase(progress, "gathering", path))

    arrays = _open_group(str(target / path))
    for name, array in arrays.items():
        write_pieces(array, _pieces(gather, name))


def _pieces(gather: Sequence[GatherTask], name: str) -> Iterator[tuple[int, np.ndarray]]:
    for task in gather:
        with np.load(task.pieces) as saved:
            found = [key.split(".") for key in saved.files if key.startswith(f"{name}.")]
            for _, number, at in sorted(found, key=lambda k: int(k[1])):
                yield int(at), saved[f"{name}.{number}.{at}"]


def _phase(progress: Progress | None, what: str, label: str) -> Progress | None:
    if progress is None:
        return None
    return lambda _, done, total: progress(f"{what} {label}", done, total)
