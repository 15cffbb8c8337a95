"""One sparse matrix of many inputs combined by independent tasks, for dask: concat's
combining phase (and its shuffle) on ``--workers`` or a ``--scheduler``'s cluster.

The serial path (:func:`annlayout.combine.concat._write_matrix`) appends row blocks in order,
which one process must do. Here the rows take two passes through files, each made of tasks
that share nothing but a scratch location the driver and every worker reach (a directory, or
a prefix on object storage: :mod:`annlayout.storage.scratch`):

- **scatter**, one task per thread of the executor, each given a run of the inputs' row
  blocks: it reads them one at a time (by the input's location), moves them onto the result's
  columns, splits them by the bucket of new positions they go to (pieces waiting on the
  worker's own disk), and at the end writes one rows, indices and data file with the buckets
  one after another, and each bucket's bounds;
- **gather**, one task per bucket: read the bucket's range from every scatter task's files
  (one ranged read each: O(threads x buckets) reads in all), put the rows in their final
  order and write them into the combined arrays (created with their final shapes once the
  scatter told every bucket's size). A bucket writes the chunks it covers whole; the pieces of
  the chunks it shares with its neighbours go to a file, and the driver writes those chunks
  last, so no chunk is written by two tasks (checked as the tasks are planned).

Without a new order the buckets are the input blocks (sized by each input's density), so a
gather task reads one scatter task's range. With one, buckets are equal runs of new
positions, and a gather task reads a part of every scatter task's files. A task's last file (a
scatter task's bounds, a gather task's pieces) is written whole or not at all, so a task whose
last file exists is done and a resumed run skips it; one that was killed starts again from
nothing.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from annlayout.base.errors import IntegrityError
from annlayout.combine.buckets import RowBuckets, equal_edges
from annlayout.combine.collection import (
    in_new_order,
    input_blocks,
    is_monotonic,
    remap_rows,
)
from annlayout.execute.tasks import (
    Distributed,
    Executor,
    Progress,
    Threads,
    execute,
    signature,
)
from annlayout.planning.memory import check_disjoint_units, per_worker, rows_per_block, span_of
from annlayout.reading.reader import Dataset, Matrix
from annlayout.reading.reader import open as open_dataset
from annlayout.storage import scratch
from annlayout.storage.commit import check_interrupted
from annlayout.storage.pipeline import opening
from annlayout.storage.remote import codec_pipeline_for, store_backend
from annlayout.write.whole_chunks import WholeChunkWriter, whole_span, write_pieces

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
class Rows:
    """Rows ``start:stop`` of ``source``, the stack's rows ``first`` onwards (``rank``: the
    new position of each; None: its place in the stack)."""

    source: Source
    column_map: np.ndarray
    monotonic: bool
    start: int
    stop: int
    first: int
    rank: np.ndarray | None


@dataclass(frozen=True, eq=False)
class ScatterTask:
    """``blocks`` (read one at a time, each within the task's budget) into the buckets whose
    new positions ``edges`` bounds. Its files go to ``directory`` (a path or URL), bucket
    after bucket: one rows, indices and data file for all its blocks, so a gather task reads
    one range per scatter task, and a run has about as many scatter tasks as the cluster has
    threads (not one per block). Until then each bucket's pieces wait in files on the
    worker's own disk."""

    blocks: tuple[Rows, ...]
    edges: np.ndarray
    dtypes: tuple[str, str]  # of the combined indices and data
    directory: str
    nbytes: int  # the values it moves (for progress)

    @property
    def done(self) -> bool:
        return scratch.exists(scratch.join(self.directory, "bounds.npy"))

    def run(self, advance: Callable[[int], None] | None = None) -> int:
        with tempfile.TemporaryDirectory(prefix="annlayout-scatter-") as spool:
            spooled = Path(spool)
            buckets = RowBuckets(spooled / "buckets", self.edges)
            for block in self.blocks:
                check_interrupted()
                buckets.add_csr(*self._read(block))
            held = [buckets.held(bucket) for bucket in range(buckets.n_buckets)]
            rows_in = np.array([ranks.size for ranks, _ in held], dtype=np.int64)
            values_in = np.array([int(lengths.sum()) for _, lengths in held], dtype=np.int64)
            hit = np.flatnonzero(rows_in)
            row_ends, value_ends = np.cumsum(rows_in[hit]), np.cumsum(values_in[hit])
            bounds = np.stack([
                hit, row_ends - rows_in[hit], row_ends, value_ends - values_in[hit], value_ends,
            ]).astype(np.int64)  # fmt: skip
            # one file of each with the buckets one after another: a gather task reads a range
            with open(spooled / "rows.bin", "wb") as out:
                for bucket in hit.tolist():
                    np.column_stack(held[bucket]).astype(np.int64).tofile(out)
            for name in ("indices", "data"):
                with open(spooled / f"{name}.bin", "wb") as out:
                    for bucket in hit.tolist():
                        with open(buckets.file(bucket, name), "rb") as piece:
                            shutil.copyfileobj(piece, out)
                        os.unlink(buckets.file(bucket, name))
            for name in ("rows", "indices", "data"):
                scratch.put_file(
                    spooled / f"{name}.bin", scratch.join(self.directory, f"{name}.bin")
                )
        saved = io.BytesIO()
        np.save(saved, bounds)
        scratch.write_bytes(scratch.join(self.directory, "bounds.npy"), saved.getbuffer())
        if advance:  # last: the task is done
            advance(self.nbytes)
        return self.nbytes

    def _read(self, block: Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(new positions, indptr, indices, data) of a block's rows on the result's columns,
        in the combined dtypes."""
        import scipy.sparse as sp

        matrix = source_matrix(block.source)
        read = sp.csr_matrix(matrix.rows(block.start, block.stop))
        ptr, idx, val = remap_rows(
            read.indptr, read.indices, read.data, block.column_map, monotonic=block.monotonic
        )
        del read
        index_dtype, data_dtype = map(np.dtype, self.dtypes)
        idx, val = idx.astype(index_dtype, copy=False), val.astype(data_dtype, copy=False)
        n_rows = block.stop - block.start
        rank = (
            block.rank if block.rank is not None else np.arange(block.first, block.first + n_rows)
        )
        return rank, ptr, idx, val


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
    budget: int  # what the task may hold: its writers' spans come from it

    @property
    def done(self) -> bool:
        return scratch.exists(self.pieces)

    @property
    def n_values(self) -> int:
        return sum(part.value_range[1] - part.value_range[0] for part in self.parts)

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
                path = scratch.join(part.directory, f"{name}.bin")
                got = scratch.read_range(path, lo * dtype.itemsize, hi * dtype.itemsize)
                values = np.frombuffer(got, dtype, count=len(got) // dtype.itemsize)
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
            for number, (at, piece) in enumerate(self._write(arrays[name], start, values)):
                pieces[f"{name}.{number}.{at}"] = piece
        saved = io.BytesIO()
        np.savez(saved, **pieces)  # type: ignore[arg-type]
        scratch.write_bytes(self.pieces, saved.getbuffer())  # whole or absent: done
        if advance:
            advance(self.nbytes)
        return self.nbytes

    def _write(self, array: Any, start: int, values: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """``values`` written at ``start`` where they cover a chunk whole; the pieces of the
        chunks they cover in part, which the driver writes (:func:`write_pieces`)."""
        chunk = int(array.chunks[0])
        span = span_of(chunk, chunk * array.dtype.itemsize, False, self.budget)
        writer = WholeChunkWriter(
            array, chunk, array.dtype, position=start, span=span, keep_partial=True
        )
        writer.write(values)
        return writer.close()


def _open_group(path: str) -> dict[str, Any]:
    import zarr

    from annlayout.storage.stores import zarr_store

    # uncompressed: zarrs writes faster (where it can reach the store)
    with opening(codec_pipeline_for("zarrs", path)):
        return {
            name: zarr.open_array(zarr_store(f"{path}/{name}", read_only=False), mode="r+")
            for name in ("indptr", "indices", "data")
        }


# --------------------------------------------------------------------------- driver


def assemble_sparse(
    target: str,
    path: str,
    sources: Sequence[Source],
    matrices: Sequence[Any],
    maps: Sequence[np.ndarray],
    n_vars: int,
    dtype: np.dtype,
    rank: np.ndarray | None,
    budget: int,
    executor: Executor,
    directory: str,
    progress: Progress | None = None,
) -> None:
    """The inputs' ``matrices`` (read again by the tasks from ``sources``) stacked into the CSR
    group ``path`` of the zarr v3 store at ``target`` (a path or URL every worker reaches),
    rows moved to ``rank`` if given. ``budget`` is shared by the executor's threads (a
    cluster's worker runs a task within all of it, as apply's tasks do); the tasks' files go
    to ``directory`` (a path or URL), which a resumed run finds as the killed one left it (a
    different plan starts it again)."""
    workers = executor.workers if isinstance(executor, Threads) else 1
    per_task = per_worker(budget, workers)
    dtype = np.dtype(dtype)
    index_dtype = np.dtype(np.int32 if n_vars < 2**31 else np.int64)
    dtypes = (index_dtype.str, dtype.str)
    scatter, edges = _scatter_tasks(
        sources, matrices, maps, rank, per_task, dtypes, scratch.join(directory, "scatter"),
        slots(executor),
    )  # fmt: skip
    plan = json.dumps({
        "tasks": [[[b.source.location, b.source.element, b.start, b.stop] for b in t.blocks]
                  for t in scatter],
        "edges": edges.tolist(), "dtypes": dtypes,
    })  # fmt: skip
    plan_file = scratch.join(directory, "plan.json")
    try:
        planned = scratch.read_bytes(plan_file).decode()
    except FileNotFoundError:
        planned = None
    if planned != plan:
        scratch.remove(directory)  # made by another plan: started again
        scratch.write_bytes(plan_file, plan.encode())
    execute([t for t in scatter if not t.done], executor, _phase(progress, "scattering", path))

    n_obs = int(edges[-1])
    n_buckets = edges.size - 1
    parts: list[list[Part]] = [[] for _ in range(n_buckets)]
    rows_in, values_in = np.zeros(n_buckets, np.int64), np.zeros(n_buckets, np.int64)
    for task in scatter:
        saved = scratch.read_bytes(scratch.join(task.directory, "bounds.npy"))
        for bucket, row_lo, row_hi, value_lo, value_hi in np.load(io.BytesIO(saved)).T.tolist():
            parts[bucket].append(Part(task.directory, (row_lo, row_hi), (value_lo, value_hi)))
            rows_in[bucket] += row_hi - row_lo
            values_in[bucket] += value_hi - value_lo
    if not np.array_equal(rows_in, np.diff(edges)):
        raise IntegrityError(f"{path}: {int(rows_in.sum())} rows scattered, {n_obs} expected")
    first_values = np.concatenate([[0], np.cumsum(values_in)])
    group = scratch.join(target, path)
    _create_arrays(target, path, directory, n_obs, n_vars, int(first_values[-1]), dtypes)

    gather = [
        GatherTask(
            bucket,
            tuple(parts[bucket]),
            int(edges[bucket]),
            int(edges[bucket + 1] - edges[bucket]),
            int(first_values[bucket]),
            group,
            scratch.join(directory, "gather", f"{bucket:06d}.npz"),
            int(values_in[bucket]) * (index_dtype.itemsize + dtype.itemsize),
            per_task,
        )
        for bucket in range(n_buckets)
    ]
    arrays = _open_group(group)
    check_whole_chunks(gather, {name: (int(a.chunks[0]), int(a.shape[0]))
                                for name, a in arrays.items()}, path)  # fmt: skip
    execute([t for t in gather if not t.done], executor, _phase(progress, "gathering", path))
    for name, array in arrays.items():
        write_pieces(array, _pieces(gather, name), f"{path}/{name}")


def slots(executor: Executor) -> int:
    """The tasks the executor runs at once: a dask.distributed cluster's threads, as many
    scatter tasks as there are (each reads its blocks one after another)."""
    if isinstance(executor, Threads):
        return max(1, executor.workers)
    if isinstance(executor, Distributed):
        from dask.distributed import Client

        with Client(executor.address, set_as_default=False) as client:
            return max(1, sum(client.nthreads().values()))
    return 1


def gather_writes(
    task: GatherTask, chunks: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    """The values each array of ``task``'s group receives from it (its whole chunks): the
    span :meth:`GatherTask._write` writes, by array name (absent: none whole)."""
    starts = {
        "indptr": (task.first_row + (task.bucket > 0), task.first_row + task.n_rows + 1),
        "indices": (task.first_value, task.first_value + task.n_values),
        "data": (task.first_value, task.first_value + task.n_values),
    }
    spans = {}
    for name, (start, stop) in starts.items():
        chunk, size = chunks[name]
        lo, hi = whole_span(chunk, size, start, stop)
        if lo < hi:
            spans[name] = (lo, hi)
    return spans


def check_whole_chunks(
    gather: Sequence[GatherTask], chunks: dict[str, tuple[int, int]], path: str
) -> None:
    """zarr loses data when two tasks write parts of one chunk at once (zarr-python #3682):
    checked as the tasks are planned that each writes whole chunks no other task writes
    (the chunks buckets share are written by the driver, afterwards)."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for task in gather:
        for name, span in gather_writes(task, chunks).items():
            spans.setdefault(name, []).append(span)
    for name, found in spans.items():
        check_disjoint_units(f"{path}/{name}", found, *chunks[name])


def _scatter_tasks(
    sources: Sequence[Source],
    matrices: Sequence[Any],
    maps: Sequence[np.ndarray],
    rank: np.ndarray | None,
    per_task: int,
    dtypes: tuple[str, str],
    directory: str,
    n_tasks: int,
) -> tuple[list[ScatterTask], np.ndarray]:
    """Blocks of each input, sized by the input's own density, in ``n_tasks`` runs of about
    equal values, and the buckets' edges (new positions): the blocks themselves without
    ``rank``; with it, equal runs of new positions sized by the average density (a shuffle
    mixes the inputs in every bucket)."""
    n_obs = sum(int(m.shape[0]) for m in matrices)
    blocks = input_blocks([(int(m.shape[0]), int(m.nnz)) for m in matrices], per_task)
    if rank is None:
        edges = np.array([*([at for *_, at in blocks] or [0]), n_obs], dtype=np.int64)
    else:
        per_bucket = rows_per_block(sum(int(m.nnz) for m in matrices), n_obs, per_task)
        edges = equal_edges(n_obs, per_bucket)
    monotonic = [is_monotonic(column_map) for column_map in maps]
    itemsize = sum(np.dtype(d).itemsize for d in dtypes)
    rows, sizes = [], []
    for number, start, stop, at in blocks:
        matrix = matrices[number]
        rows.append(Rows(
            sources[number], maps[number], monotonic[number], start, stop, at,
            None if rank is None else rank[at : at + stop - start],
        ))  # fmt: skip
        sizes.append(int(matrix.nnz * (stop - start) // max(1, int(matrix.shape[0]))) * itemsize)
    ends = np.cumsum(sizes) if sizes else np.zeros(0, np.int64)
    total = int(ends[-1]) if sizes else 0
    # block i goes to the run its middle falls in: runs of about total / n_tasks values
    runs = [
        int((end - size / 2) * n_tasks // max(1, total))
        for end, size in zip(ends, sizes, strict=True)
    ]
    tasks = []
    for run in sorted(set(runs)):
        members = [i for i, r in enumerate(runs) if r == run]
        first = rows[members[0]]
        tasks.append(ScatterTask(
            tuple(rows[i] for i in members), edges, dtypes,
            scratch.join(directory, f"{first.first:012d}"),
            sum(sizes[i] for i in members),
        ))  # fmt: skip
    return tasks, edges


def _create_arrays(
    target: str,
    path: str,
    directory: str,
    n_obs: int,
    n_vars: int,
    nnz: int,
    dtypes: tuple[str, str],
) -> None:
    """The CSR group with its final shapes, unless a killed run of this plan made it (then
    its gathered buckets are kept)."""
    import zarr

    from annlayout.storage.stores import zarr_store

    created = scratch.join(directory, "arrays.json")
    shape = json.dumps({"n_obs": n_obs, "nnz": nnz})
    try:
        if scratch.read_bytes(created).decode() == shape:
            return
    except FileNotFoundError:
        pass
    root = zarr.open_group(zarr_store(target, read_only=False), mode="r+")
    group = root.create_group(path, overwrite=True)
    group.attrs.update(
        {"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [n_obs, n_vars]}
    )
    index_dtype, dtype = dtypes
    for name, length, array_dtype in (
        ("data", nnz, dtype), ("indices", nnz, index_dtype), ("indptr", n_obs + 1, np.int64),
    ):  # fmt: skip
        group.create_array(name, shape=(length,), dtype=array_dtype, chunks=(TASK_CHUNK,),
                           compressors=None)  # fmt: skip
    scratch.remove(scratch.join(directory, "gather"))  # written into the old arrays
    scratch.write_bytes(created, shape.encode())


def _pieces(gather: Sequence[GatherTask], name: str) -> Iterator[tuple[int, np.ndarray]]:
    for task in gather:
        with np.load(io.BytesIO(scratch.read_bytes(task.pieces))) as saved:
            found = [key.split(".") for key in saved.files if key.startswith(f"{name}.")]
            for _, number, at in sorted(found, key=lambda k: int(k[1])):
                yield int(at), saved[f"{name}.{number}.{at}"]


def _phase(progress: Progress | None, what: str, label: str) -> Progress | None:
    if progress is None:
        return None
    return lambda _, done, total: progress(f"{what} {label}", done, total)
