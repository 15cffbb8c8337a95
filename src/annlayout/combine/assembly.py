"""One sparse matrix of many inputs combined by independent tasks, for dask: concat's
combining phase (and its shuffle) on ``--workers`` or a ``--scheduler``'s cluster.

The serial path (:func:`annlayout.combine.concat._write_matrix`) appends row blocks in order,
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

Without a new order the buckets are the scatter tasks' blocks (sized by each input's density),
so a gather task reads one file. With one, buckets are equal runs of new positions, and a
gather task reads a part of every scatter task's files. A task's last file (a scatter task's
bounds, a gather task's pieces) is written under a temporary name and renamed into place, so a
task whose last file exists is done and a resumed run skips it; one that was killed starts
again from nothing (a scatter task clears its directory first).
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from annlayout.base.errors import IntegrityError
from annlayout.combine.collection import (
    by_bucket,
    in_new_order,
    input_blocks,
    is_monotonic,
    remap_rows,
    rows_per_block,
)
from annlayout.execute.tasks import Executor, Progress, Threads, execute, signature
from annlayout.planning.codecs import codec_pipeline
from annlayout.reading.reader import Dataset, Matrix
from annlayout.reading.reader import open as open_dataset
from annlayout.storage.commit import check_interrupted
from annlayout.storage.remote import store_backend

# values per chunk of the combined arrays (uncompressed): small beside a bucket's nonzeros
# (hundreds of thousands at a 1 GiB budget), so the chunks buckets share, which the driver
# writes, hold little of data and indices (indptr, a value per row, is mostly written there)
TASK_CHUNK = 2**16


@dataclass(frozen=True)
class Source:
    """One input's matrix, as a task finds it: the input's location (absolute for a local
    path: workers' working directories differ), the element (``X``, ``layers/NAME``,
    ``raw/X``) and the object-store client to open a URL with (workers of a cluster started
    elsewhere do not share the driver's environment)."""

    location: str
    element: str
    store_backend: str | None = None


_open_lock = threading.Lock()


def source_matrix(source: Source) -> Matrix:
    """The matrix, its indptr read (once per process: two threads never both read it)."""
    with _open_lock, store_backend(source.store_backend):
        matrix = _dataset(*signature(source.location)).matrix(source.element)
        if not isinstance(matrix, Matrix):
            raise ValueError(f"{source.location}: no stored {source.element} to combine")
        matrix.warm()
        return matrix


@lru_cache(maxsize=8)  # a worker takes its tasks input by input
def _dataset(location: str, mtime: int | None) -> Dataset:
    return open_dataset(location)


# --------------------------------------------------------------------------- scatter


@dataclass(frozen=True, eq=False)
class ScatterTask:
    """Rows ``start:stop`` of ``source``, the stack's rows ``first`` onwards, into the
    buckets whose new positions ``edges`` bounds (``rank``: the new position of each of its
    rows; None: its place in the stack). Its files go to ``directory``."""

    source: Source
    column_map: np.ndarray
    monotonic: bool
    start: int
    stop: int
    first: int
    rank: np.ndarray | None
    edges: np.ndarray
    dtypes: tuple[str, str]  # of the combined indices and data
    directory: str
    nbytes: int  # the values it moves (for progress)

    @property
    def done(self) -> bool:
        return (Path(self.directory) / "bounds.npy").exists()

    def run(self, advance: Callable[[int], None] | None = None) -> int:
        import scipy.sparse as sp

        check_interrupted()
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
        buckets = np.searchsorted(self.edges, rank, side="right") - 1
        order, ptr, idx, val, row_bounds = by_bucket(buckets, self.edges.size - 1, ptr, idx, val)
        hit = np.flatnonzero(np.diff(row_bounds))  # only these: a task meets few buckets unshuffled
        lo, hi = row_bounds[hit], row_bounds[hit + 1]
        bounds = np.stack([hit, lo, hi, ptr[lo], ptr[hi]]).astype(np.int64)
        rows = np.column_stack([rank[order], np.diff(ptr)]).astype(np.int64)
        directory = Path(self.directory)
        shutil.rmtree(directory, ignore_errors=True)  # a killed run's part files
        directory.mkdir(parents=True, exist_ok=True)
        for name, values in (("rows", rows), ("indices", idx), ("data", val)):
            values.tofile(directory / f"{name}.bin")  # raw: a gather task reads a range of it
        partial = directory / "bounds.partial.npy"
        np.save(partial, bounds)
        partial.replace(directory / "bounds.npy")  # last: the task is done
        if advance:
            advance(self.nbytes)
        return self.nbytes


# --------------------------------------------------------------------------- gather


@dataclass(frozen=True)
class Part:
    """A bucket's rows in one scatter task's files: ``row_range`` of its rows file,
    ``value_range`` of its indices and data."""

    directory: str
    row_range: tuple[int, int]
    value_range: tuple[int, int]


@dataclass(frozen=True, eq=False)
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
        check_interrupted()
        arrays = _open_group(self.group)
        pairs = np.dtype((np.int64, 2))  # a row's new position and its nonzeros
        read: dict[str, list[np.ndarray]] = {"rows": [], "indices": [], "data": []}
        for part in self.parts:  # one read of each range (a shuffle's bucket: in every file)
            for name, (lo, hi), dtype in (
                ("rows", part.row_range, pairs),
                ("indices", part.value_range, arrays["indices"].dtype),
                ("data", part.value_range, arrays["data"].dtype),
            ):
                path = Path(part.directory) / f"{name}.bin"
                values = np.fromfile(path, dtype, count=hi - lo, offset=lo * dtype.itemsize)
                if values.shape[0] != hi - lo:
                    raise IntegrityError(f"{path}: {values.shape[0]} values, {hi - lo} expected")
                read[name].append(values)
        rows, indices, data = (
            np.concatenate(read[name]) if read[name] else np.empty(0, dtype)
            for name, dtype in (("rows", pairs), ("indices", arrays["indices"].dtype),
                                ("data", arrays["data"].dtype))
        )  # fmt: skip
        rows = rows.reshape(-1, 2)
        ptr, idx, val = in_new_order(
            rows[:, 0], rows[:, 1], indices, data, self.first_row, self.n_rows, self.bucket
        )
        # indptr has a value more than rows: its first (0) is written by the first bucket, and
        # every bucket writes the ends of its rows
        skip = 0 if self.bucket == 0 else 1
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
    pieces of the chunks they cover in part are returned ((position, values) each, within one
    chunk), for whoever writes those chunks whole."""
    chunk, size, stop = int(array.chunks[0]), int(array.shape[0]), start + values.size
    lo = -(-start // chunk) * chunk  # the first chunk boundary at or after start
    hi = stop if stop == size else stop // chunk * chunk
    if lo < hi:
        array[lo:hi] = values[lo - start : hi - start]
        spans = [(start, lo), (hi, stop)]
    else:  # no chunk whole: within one chunk, or across the one boundary lo
        middle = lo if start < lo < stop else start
        spans = [(start, middle), (middle, stop)]
    return [(a, values[a - start : b - start]) for a, b in spans if b > a]


def write_pieces(array: Any, pieces: Iterator[tuple[int, np.ndarray]], name: str) -> None:
    """Chunks put together from ``pieces`` (in position order, each within one chunk) and
    written whole, one at a time. ``name``: the array's, for errors."""
    chunk, size = int(array.chunks[0]), int(array.shape[0])
    current, at = -1, 0  # the chunk being filled, where it is filled to
    parts: list[np.ndarray] = []
    for position, values in pieces:
        number = position // chunk
        if (position + values.size - 1) // chunk != number:
            raise IntegrityError(f"{name}: a piece at {position} crosses a chunk boundary")
        if number != current:
            if parts:
                raise IntegrityError(f"{name}: chunk {current} is incomplete")
            current, at = number, number * chunk
        if position != at:
            raise IntegrityError(f"{name}: values {at} to {position} are missing")
        parts.append(values)
        at += values.size
        if at == min(size, (number + 1) * chunk):
            array[number * chunk : at] = np.concatenate(parts)
            parts = []
    if parts:
        raise IntegrityError(f"{name}: chunk {current} is incomplete")


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
    group ``path`` of the zarr v3 store at ``target`` (local), rows moved to ``rank`` if
    given. ``budget`` is shared by the executor's threads (a cluster's worker runs a task
    within all of it, as apply's tasks do); the tasks' files go to ``directory``, which a
    resumed run finds as the killed one left it (a different plan starts it again)."""
    workers = executor.workers if isinstance(executor, Threads) else 1
    per_task = max(1, budget // max(1, workers))
    dtype = np.dtype(dtype)
    index_dtype = np.dtype(np.int32 if n_vars < 2**31 else np.int64)
    dtypes = (index_dtype.str, dtype.str)
    scatter, edges = _scatter_tasks(
        sources, matrices, maps, rank, per_task, dtypes, directory / "scatter"
    )
    plan = json.dumps({
        "tasks": [[t.source.location, t.source.element, t.start, t.stop] for t in scatter],
        "edges": edges.tolist(), "dtypes": dtypes,
    })  # fmt: skip
    if not (directory / "plan.json").exists() or (directory / "plan.json").read_text() != plan:
        shutil.rmtree(directory, ignore_errors=True)  # made by another plan: started again
        directory.mkdir(parents=True)
        (directory / "plan.json").write_text(plan)
    execute([t for t in scatter if not t.done], executor, _phase(progress, "scattering", path))

    n_obs = int(edges[-1])
    n_buckets = edges.size - 1
    parts: list[list[Part]] = [[] for _ in range(n_buckets)]
    rows_in, values_in = np.zeros(n_buckets, np.int64), np.zeros(n_buckets, np.int64)
    for task in scatter:
        for bucket, row_lo, row_hi, value_lo, value_hi in np.load(
            Path(task.directory) / "bounds.npy"
        ).T.tolist():
            parts[bucket].append(Part(task.directory, (row_lo, row_hi), (value_lo, value_hi)))
            rows_in[bucket] += row_hi - row_lo
            values_in[bucket] += value_hi - value_lo
    if not np.array_equal(rows_in, np.diff(edges)):
        raise IntegrityError(f"{path}: {int(rows_in.sum())} rows scattered, {n_obs} expected")
    first_values = np.concatenate([[0], np.cumsum(values_in)])
    _create_arrays(target, path, directory, n_obs, n_vars, int(first_values[-1]), dtypes)

    gather = [
        GatherTask(
            bucket,
            tuple(parts[bucket]),
            int(edges[bucket]),
            int(edges[bucket + 1] - edges[bucket]),
            int(first_values[bucket]),
            str(target / path),
            str(directory / "gather" / f"{bucket:06d}.npz"),
            int(values_in[bucket]) * (index_dtype.itemsize + dtype.itemsize),
        )
        for bucket in range(n_buckets)
    ]
    execute([t for t in gather if not t.done], executor, _phase(progress, "gathering", path))
    for name, array in _open_group(str(target / path)).items():
        write_pieces(array, _pieces(gather, name), f"{path}/{name}")


def _scatter_tasks(
    sources: Sequence[Source],
    matrices: Sequence[Any],
    maps: Sequence[np.ndarray],
    rank: np.ndarray | None,
    per_task: int,
    dtypes: tuple[str, str],
    directory: Path,
) -> tuple[list[ScatterTask], np.ndarray]:
    """One task per block of each input, sized by the input's own density, and the buckets'
    edges (new positions): the blocks themselves without ``rank``; with it, equal runs of new
    positions sized by the average density (a shuffle mixes the inputs in every bucket)."""
    n_obs = sum(int(m.shape[0]) for m in matrices)
    blocks = input_blocks([(int(m.shape[0]), int(m.nnz)) for m in matrices], per_task)
    if rank is None:
        starts = [at for *_, at in blocks]
    else:
        per_bucket = rows_per_block(sum(int(m.nnz) for m in matrices), n_obs, per_task)
        starts = list(range(0, n_obs, per_bucket))
    edges = np.array([*(starts or [0]), n_obs], dtype=np.int64)
    monotonic = [is_monotonic(column_map) for column_map in maps]
    itemsize = sum(np.dtype(d).itemsize for d in dtypes)
    tasks = []
    for number, start, stop, at in blocks:
        matrix = matrices[number]
        tasks.append(ScatterTask(
            sources[number], maps[number], monotonic[number], start, stop, at,
            None if rank is None else rank[at : at + stop - start], edges,
            dtypes, str(directory / f"{number:05d}-{start:012d}"),
            int(matrix.nnz * (stop - start) // max(1, int(matrix.shape[0]))) * itemsize,
        ))  # fmt: skip
    return tasks, edges


def _create_arrays(
    target: Path,
    path: str,
    directory: Path,
    n_obs: int,
    n_vars: int,
    nnz: int,
    dtypes: tuple[str, str],
) -> None:
    """The CSR group with its final shapes, unless a killed run of this plan made it (then
    its gathered buckets are kept)."""
    import zarr

    created = directory / "arrays.json"
    shape = json.dumps({"n_obs": n_obs, "nnz": nnz})
    if created.exists() and created.read_text() == shape:
        return
    group = zarr.open_group(target, mode="r+").create_group(path, overwrite=True)
    group.attrs.update(
        {"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [n_obs, n_vars]}
    )
    index_dtype, dtype = dtypes
    for name, length, array_dtype in (
        ("data", nnz, dtype), ("indices", nnz, index_dtype), ("indptr", n_obs + 1, np.int64),
    ):  # fmt: skip
        group.create_array(name, shape=(length,), dtype=array_dtype, chunks=(TASK_CHUNK,),
                           compressors=None)  # fmt: skip
    shutil.rmtree(directory / "gather", ignore_errors=True)  # written into the old arrays
    (directory / "gather").mkdir()
    created.write_text(shape)


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
