"""Running tasks behind one signature: ``execute(tasks, executor, progress)``.

apply's tasks are block copies (:class:`CopyTask`) and out-of-core transposes
(:class:`TransposeTask`); concat's combining step has its own (:mod:`annlayout.combine.assembly`),
which need only ``nbytes`` and ``run`` (:class:`Task`). apply's are made beforehand from the
memory model (:mod:`annlayout.planning.memory`) and independent of every other task: a
transpose reads only the input. A task names its stores by location (:class:`Stores`) and
opens the arrays it needs itself, with the chosen codec pipeline, so the same task runs in the
driver, on a dask thread or on a dask.distributed worker. The driver registers the roots it already holds open
(:func:`opened`), which tasks running in its process use instead of opening them again (an h5ad
output, written through one h5py handle, needs that).

Executors: :class:`Serial` (in order, in the calling thread), :class:`Threads` (dask's threaded
scheduler) and :class:`Distributed` (a dask.distributed scheduler address). Each task runs within
the budget per worker the memory model gave it; a transpose is sequential inside (count pass,
range passes, a :class:`~annlayout.write.whole_chunks.WholeChunkWriter` per array), and transposes of
different elements or orientations run in parallel like blocks do.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import numpy as np

from annlayout.base.errors import ApplyError, UnreachableError
from annlayout.base.malloc import release_memory
from annlayout.execute.resume import record
from annlayout.planning.memory import Block, Transpose, write_unit
from annlayout.storage.commit import Interrupted, check_interrupted
from annlayout.storage.h5 import read_slice
from annlayout.write.copies import transposed_indptr, transposed_ranges
from annlayout.write.whole_chunks import WholeChunkWriter

Progress = Callable[[str, int, int], None]  # (what, done, total)
Advance = Callable[[int], None]


# --------------------------------------------------------------------------- stores


@dataclass(frozen=True)
class Stores:
    """Where a task's input and output are, and the zarr codec pipeline and object-store
    client (:mod:`annlayout.storage.remote`) to open them with: workers of a cluster started
    elsewhere do not share the driver's environment."""

    source: str
    target: str
    codec_pipeline: str | None = None
    store_backend: str | None = None


# the driver's open roots, by (role, location): tasks in its process use them
_opened: dict[tuple[str, str], Any] = {}


@contextmanager
def opened(stores: Stores, source_root: Any, target_root: Any) -> Iterator[None]:
    """Tasks running in this process use these roots for ``stores``' locations."""
    keys = [("source", stores.source), ("target", stores.target)]
    _opened.update(zip(keys, (source_root, target_root), strict=True))
    try:
        yield
    finally:
        for key in keys:
            _opened.pop(key, None)


def open_array(stores: Stores, role: str, name: str) -> Any:
    """``name`` (an array path) in the source or target store, with the task's codec pipeline
    (zarr picks it when the array object is made: opened under storage/pipeline.py's lock, so
    threads never see another's setting, which also makes a root open once per process)."""
    from annlayout.storage.pipeline import opening
    from annlayout.storage.remote import store_backend

    location = stores.source if role == "source" else stores.target
    with opening(stores.codec_pipeline), store_backend(stores.store_backend):
        root = _opened.get((role, location))
        if root is None:
            root = (
                _open_source(*signature(location)) if role == "source" else _open_target(location)
            )
        return root[name]


def signature(location: str) -> tuple[str, int | None]:
    """A local input is reopened once it changed (a long-lived worker, a rewritten file)."""
    try:
        return location, os.stat(location).st_mtime_ns
    except OSError:  # a URL
        return location, None


@cache
def _open_source(location: str, mtime: int | None) -> Any:
    from annlayout.storage.stores import open_store

    return open_store(location)


def _open_target(location: str) -> Any:
    if location.endswith(".h5ad"):
        import h5py

        return h5py.File(location, "r+")
    import zarr

    from annlayout.storage.stores import zarr_store

    return zarr.open_group(zarr_store(location, read_only=False), mode="r+")


# --------------------------------------------------------------------------- tasks


class Task(Protocol):
    """Independent work that opens what it needs itself and reports the bytes it moved."""

    @property
    def nbytes(self) -> int: ...

    def run(self, advance: Advance | None = None) -> int: ...


@dataclass(frozen=True)
class CopyTask:
    """Copy one block: read a slice of the input, convert its dtype, write whole shards."""

    block: Block
    stores: Stores

    @property
    def nbytes(self) -> int:
        return self.block.nbytes

    def run(self, advance: Advance | None = None) -> int:
        check_interrupted()
        block = self.block
        source = open_array(self.stores, "source", block.source_array)
        target = open_array(self.stores, "target", block.target_array)
        done = copy_block(source, target, block)
        if advance:
            advance(done)
        return done


def copy_block(source: Any, target: Any, block: Block) -> int:
    try:
        values = read_slice(source, block.start, block.stop)
    except Exception as err:  # a corrupt chunk: codecs raise many kinds of errors
        raise ApplyError(
            f"{block.source_array}: cannot read the input at {block.start:,}-{block.stop:,}: "
            f"{_first_line(err)}"
        ) from None
    if values.dtype != np.dtype(block.dtype):
        values = values.astype(block.dtype)
    target[block.start : block.stop] = values
    del values
    release_memory()
    return block.nbytes


@dataclass(frozen=True)
class TransposeTask:
    """Build one orientation of a sparse element from the input's other one, out of core:
    count nonzeros per minor index, then passes over ranges of them, each pass's output
    written in whole shards as it comes."""

    transpose: Transpose
    stores: Stores

    @property
    def nbytes(self) -> int:
        """What its passes produce: the values and indices of the orientation built."""
        arrays = self.transpose.arrays
        item = sum(np.dtype(arrays[name].dtype).itemsize for name in ("data", "indices"))
        return self.transpose.nnz * item

    def run(self, advance: Advance | None = None) -> int:
        t = self.transpose
        source = {
            name: open_array(self.stores, "source", f"{t.source}/{name}")
            for name in ("data", "indices", "indptr")
        }
        target = {
            name: open_array(self.stores, "target", f"{t.group}/{name}")
            for name in ("data", "indices", "indptr")
        }
        writers = {
            name: WholeChunkWriter(
                target[name],
                write_unit(t.arrays[name]),
                t.arrays[name].dtype,
                span=t.spans.get(name),
            )
            for name in ("data", "indices")
        }
        indptr = source["indptr"][...]
        nnz = int(indptr[-1]) if len(indptr) else 0
        n_minor = t.arrays["indptr"].shape[0] - 1
        new_indptr = transposed_indptr(source["indices"], nnz, n_minor, t.sizes.read_block)
        per_nonzero = self.nbytes / max(1, t.nnz)
        for start, stop, data, major in transposed_ranges(
            source["data"], source["indices"], indptr, new_indptr,
            budget=t.sizes.pass_budget, read_block=t.sizes.read_block,
        ):  # fmt: skip
            check_interrupted()
            writers["data"].write(data)
            writers["indices"].write(major)
            del data, major
            release_memory()
            if advance:
                advance(round(stop * per_nonzero) - round(start * per_nonzero))
        for writer in writers.values():
            writer.close()
        target["indptr"][...] = new_indptr.astype(t.arrays["indptr"].dtype)
        return self.nbytes


def task_key(task: Task) -> str:
    """A task's name in the resume journal: the same on every run of the same plan."""
    if isinstance(task, CopyTask):
        block = task.block
        return f"copy {block.target_array} {block.start} {block.stop}"
    if isinstance(task, TransposeTask):
        return f"transpose {task.transpose.group}"
    raise TypeError(f"no journal key for {type(task).__name__}")


@dataclass(frozen=True)
class Journaled:
    """A task whose completion is appended to ``journal``, so a resumed run skips it."""

    task: Task
    journal: str

    @property
    def nbytes(self) -> int:
        return self.task.nbytes

    def run(self, advance: Advance | None = None) -> int:
        done = self.task.run(advance)
        record(self.journal, task_key(self.task))
        return done


def run_task(task: Task, backend: str | None = None) -> int:
    """What a dask.distributed worker runs (progress is counted when the task completes),
    with the driver's object-store client: a worker's own setting is not the run's."""
    return _run_with(backend, task, None)


def _run_with(backend: str | None, task: Task, advance: Advance | None) -> int:
    """``task`` run with the object-store client ``backend``: the driver's choice is its
    thread's (storage/remote.py), so each task thread is handed it."""
    from annlayout.storage.remote import store_backend

    with store_backend(backend):
        return task.run(advance)


# --------------------------------------------------------------------------- executors


@dataclass(frozen=True)
class Serial:
    """Every task in order, in the calling thread."""


@dataclass(frozen=True)
class Threads:
    """Tasks on ``workers`` threads of dask's threaded scheduler."""

    workers: int


@dataclass(frozen=True)
class Distributed:
    """Tasks on the dask.distributed cluster whose scheduler listens at ``address``."""

    address: str


Executor = Serial | Threads | Distributed


def executor_for(workers: int = 1, scheduler: str | None = None) -> Executor:
    if scheduler:
        return Distributed(scheduler)
    return Threads(workers) if workers > 1 else Serial()


def execute(tasks: Sequence[Task], executor: Executor, progress: Progress | None = None) -> int:
    """Run ``tasks`` on ``executor``; report bytes done as ``progress("copy", done, total)``.

    Returns the bytes the tasks report. A task's error (an ApplyError naming the array, or an
    interruption) propagates; the remaining tasks are cancelled or never started.
    """
    total = sum(t.nbytes for t in tasks)
    done = 0
    lock = threading.Lock()

    def advance(nbytes: int) -> None:
        nonlocal done
        with lock:
            done += nbytes
            if progress:
                progress("copy", done, total)

    from annlayout.storage.remote import chosen_backend

    backend = chosen_backend()  # the driver's, handed to every task
    if progress:
        progress("copy", 0, total)
    if isinstance(executor, Distributed):
        _run_distributed(tasks, executor.address, advance, backend)
    elif isinstance(executor, Threads) and executor.workers > 1:
        _run_threads(tasks, executor.workers, advance, backend)
    else:
        for task in tasks:
            check_interrupted()
            task.run(advance)
    return done


def _run_threads(tasks: Sequence[Task], workers: int, advance: Advance, backend: str) -> None:
    import dask

    # named in order: dask orders independent tasks by name, and a task's neighbours share
    # its input (opened once per process)
    delayed = [
        dask.delayed(_run_with, pure=False)(
            backend, task, advance, dask_key_name=f"task-{number:09d}"
        )
        for number, task in enumerate(tasks)
    ]
    dask.compute(*delayed, scheduler="threads", num_workers=workers)


def _run_distributed(tasks: Sequence[Task], address: str, advance: Advance, backend: str) -> None:
    from dask.distributed import Client, as_completed

    with Client(address, set_as_default=False) as client:
        futures = client.map(run_task, list(tasks), backend=backend, pure=False)
        for future in as_completed(futures, loop=client.loop):
            try:
                check_interrupted()
            except Interrupted:
                client.cancel(futures)
                raise
            advance(future.result())


# --------------------------------------------------------------------------- reachability

REACH_TIMEOUT = 60  # seconds to connect to the scheduler and hear from every worker


def check_reachable(address: str, inputs: Sequence[str], output: str, *writable: str) -> None:
    """Every worker of the cluster at ``address`` sees each of ``inputs``, and can write
    where ``output`` and each of ``writable`` (a scratch) go; else :class:`UnreachableError`
    naming the first path a worker cannot reach. Run before any work: a worker that cannot
    open an input would otherwise fail its first task after the driver read every input's
    small elements, and one that writes into its own local disk would leave the driver a
    store with holes. A local folder is the same for a worker only if it finds there the
    probe file the driver puts in it (a worker's own /tmp is writable too, but not shared)."""
    from dask.distributed import Client

    from annlayout.storage.remote import chosen_backend, is_url

    with ExitStack() as probes:
        written: list[tuple[str, str | None]] = []
        for location in [output, *writable]:
            probe = None
            if not is_url(location):
                with suppress(OSError):  # a folder the driver cannot write: its own check
                    probe = probes.enter_context(
                        tempfile.NamedTemporaryFile(
                            dir=_nearest_folder(location), prefix=".annlayout-probe-"
                        )
                    ).name
            written.append((location, probe))
        with Client(address, timeout=REACH_TIMEOUT, set_as_default=False) as client:
            answers = client.run(_unreachable, list(inputs), written, chosen_backend())
    for worker, problem in sorted(answers.items()):
        if problem:
            where, reason = problem
            raise UnreachableError(
                f"{where}: the dask worker at {worker} cannot reach it ({reason}); on a "
                "cluster, inputs, OUTPUT and --scratch go on object storage (s3://...) or a "
                "file system every worker mounts"
            )


def _nearest_folder(location: str) -> str:
    """The folder that exists nearest above ``location``."""
    directory = os.path.dirname(os.path.abspath(location))
    while not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    return directory


def _unreachable(
    inputs: list[str], written: list[tuple[str, str | None]], backend: str | None
) -> tuple[str, str] | None:
    """On a worker: (location, why) of the first location it cannot reach, or None.
    ``written``: (location, the driver's probe file beside it, if local)."""
    import uuid

    from annlayout.storage import scratch
    from annlayout.storage.remote import delete_objects, is_url, store_backend

    with store_backend(backend):
        for location in inputs:
            try:
                if not _readable(location):
                    return location, "nothing there"
            except Exception as err:  # credentials, endpoint, a refused connection
                return location, _first_line(err)
        for location, probe in written:
            location = location.rstrip("/")
            try:
                if is_url(location):  # a probe object beside it, written and removed
                    parent, _, leaf = location.rpartition("/")
                    name = f"{leaf}.annlayout-probe-{uuid.uuid4().hex[:8]}"
                    scratch.write_bytes(f"{parent}/{name}", b"")
                    delete_objects(parent, [name])
                    continue
                directory = _nearest_folder(location)
                if probe is not None and not os.path.exists(probe):
                    return location, "a local folder of the driver's, not shared with it"
                if not os.access(directory, os.W_OK):
                    return location, f"its folder {directory} is not writable there"
            except Exception as err:
                return location, _first_line(err)
    return None


def _readable(location: str) -> bool:
    from annlayout.storage.remote import is_url, object_info, zarr_exists

    if not is_url(location):
        return os.path.exists(location)
    try:
        object_info(location)  # an h5ad file: one object
        return True
    except FileNotFoundError:
        return zarr_exists(location)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


__all__ = [
    "CopyTask",
    "Distributed",
    "Executor",
    "Serial",
    "Stores",
    "Task",
    "Threads",
    "TransposeTask",
    "check_reachable",
    "copy_block",
    "execute",
    "executor_for",
    "open_array",
    "opened",
    "run_task",
]
