"""Training minibatches from one or more stores: block sampling with read-ahead.

A loader that asks for random rows one batch at a time decodes a chunk for almost every row
it wants. Training loaders read by *blocks* instead: runs of rows that are whole chunks.
This module does that on annlayout's reader:

- an epoch is the store's blocks (default: the rows between chunk starts, see
  ``Matrix.chunk_starts``) in an order drawn from ``(seed, epoch)``, split between ranks
  and DataLoader workers (:func:`split`: each block goes to exactly one of them);
- a *buffer* of blocks is read together through the reader's coalesced chunk reads (sorted
  rows: each chunk fetched and decoded once, on the read pool's threads), and batches take
  its rows in a shuffled order; rows left over at the end of a buffer open the next batch,
  so every batch but the last of an epoch is full (with ``drop_last``, every rank yields
  as many full batches);
- the next buffer is read in a task of its own while the current one is consumed, at most
  one buffer ahead, both within ``memory=``.

The core is async (:meth:`Batches.aiter_worker`): chunks are fetched on the running event
loop and decoded and shuffled on the read pool's threads. :func:`abatches` runs it on the
caller's loop; the sync iterator drives it on zarr's event loop thread, which reads the
next buffer between the caller's steps. This module sits below the reader: it takes
datasets and reads them through their matrices' methods (``atake``, ``chunk_starts``), so
the reader can offer ``Dataset.batches``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from importlib.util import find_spec
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from annlayout.base.defaults import LOADER_MEMORY
from annlayout.base.errors import LoaderError
from annlayout.base.optional import requirement
from annlayout.storage.chunks import read_pool

OUTPUTS = ("scipy", "numpy", "torch", "jax")
#: a buffer holds at least this many batches' rows when ``buffer`` is not given (memory
#: permitting): annbatch's defaults (32 blocks of 512 rows) hold 4 batches of 4096
BUFFER_BATCHES = 8
#: rows per block where the values are not chunked (contiguous h5ad datasets): any run of
#: rows reads alone there, and annbatch's default block is as long
UNCHUNKED_BLOCK = 512
#: a default block is whole chunks, as many as hold at least this many rows: a block's last
#: row straddles into the next chunk, which is decoded too, so one-chunk blocks of small
#: chunks (64 rows) decoded about twice the bytes they kept; at 512 rows (annbatch's block)
#: that is one chunk in nine, and a buffer still holds 64 blocks
BLOCK_ROWS = 512
#: buffers alive at once: the one a held batch keeps (batches are views of their buffer's
#: shuffled arrays), the one being consumed, and the newest twice (as decoded, and
#: shuffled into the arrays its batches view)
BUFFERS_HELD = 4


@dataclass
class Batch:
    """One minibatch: ``X`` in the requested output form, the requested ``obs`` columns (a
    DataFrame indexed by obs names, or None when none were asked for), ``index`` (each row's
    position in its store) and ``source`` (each row's store: its position in the list of
    datasets given)."""

    X: Any
    obs: pd.DataFrame | None
    index: np.ndarray
    source: np.ndarray

    def __len__(self) -> int:
        return int(self.index.size)


@dataclass
class _Piece:
    """Rows read, before they are cut into batches; ``order``: the shuffled order they are
    taken in (None: as stored)."""

    X: Any
    index: np.ndarray
    source: np.ndarray
    order: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.index.size)

    def gather(self, start: int, stop: int) -> _Piece:
        """Rows ``start:stop`` of the order batches take them in, copied out at once."""
        taken = slice(start, stop) if self.order is None else self.order[start:stop]
        return _Piece(self.X[taken], self.index[taken], self.source[taken])

    def view(self, start: int, stop: int) -> _Piece:
        """Rows ``start:stop`` as stored here, without a copy (views of these arrays)."""
        return _Piece(_row_view(self.X, start, stop), self.index[start:stop],
                      self.source[start:stop])  # fmt: skip


def split(n_blocks: int, *, rank: int, world_size: int, worker: int, num_workers: int) -> slice:
    """The blocks of an epoch's order that one (rank, worker) reads: every P-th one from its
    own offset, P = world_size x num_workers. The P shares are disjoint and together cover
    every block once; strided rather than contiguous so that each share spans the whole
    order (shares differ by at most one block)."""
    if not 0 <= rank < world_size:
        raise LoaderError(f"rank={rank}: expected 0 <= rank < world_size={world_size}")
    if not 0 <= worker < num_workers:
        raise LoaderError(f"worker {worker}: expected 0 <= worker < num_workers={num_workers}")
    participants = world_size * num_workers
    return slice(rank * num_workers + worker, max(n_blocks, 0), participants)


def batches(
    datasets: Sequence[Any],
    batch_size: int = 4096,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    block: int | None = None,
    buffer: int | None = None,
    obs: Sequence[str] = (),
    layer: str | None = None,
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    memory: int | str = LOADER_MEMORY,
    output: str = "scipy",
    device: Any = None,
) -> Batches:
    """Minibatches over the rows of ``datasets`` (``annlayout.open`` handles) read as one.

    - ``block``: rows per contiguous read (default: the rows of one chunk of the store's
      row-major data, so blocks are whole chunks; ``UNCHUNKED_BLOCK`` rows where the data
      are not chunked);
    - ``buffer``: blocks read together and shuffled in memory (default: enough for
      ``BUFFER_BATCHES`` batches), fewer where ``memory`` says so;
    - ``obs``: obs columns each batch carries; ``layer``: a layer instead of X;
    - ``rank``/``world_size``: this process's share (default: torch.distributed's when it
      is initialised, else the whole); DataLoader workers split a rank's share further;
    - ``memory``: bytes (or ``"1GiB"``) the buffers in flight may hold (X as read: a dense
      ``output`` adds its batch on top);
    - ``output``: ``scipy`` (CSR; an array for a dense store), ``numpy`` (dense),
      ``torch`` or ``jax``; ``device``: where torch or jax puts X.

    The order is fixed by ``(seed, epoch)``; call :meth:`Batches.set_epoch` between epochs.
    """
    cls = _torch_batches() if torch_installed() else Batches
    return cls(
        datasets,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        block=block,
        buffer=buffer,
        obs=obs,
        layer=layer,
        drop_last=drop_last,
        rank=rank,
        world_size=world_size,
        memory=memory,
        output=output,
        device=device,
    )


class Batches:
    """A re-iterable epoch of minibatches (see :func:`batches`); ``len()`` is the number of
    batches this process yields (its rank's share, or its DataLoader worker's)."""

    def __init__(
        self,
        datasets: Sequence[Any],
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        epoch: int,
        block: int | None,
        buffer: int | None,
        obs: Sequence[str],
        layer: str | None,
        drop_last: bool,
        rank: int | None,
        world_size: int | None,
        memory: int | str,
        output: str,
        device: Any,
    ):
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise LoaderError(f"batch_size={batch_size!r}: expected a positive integer")
        if block is not None and block <= 0:
            raise LoaderError(f"block={block!r}: expected a positive number of rows")
        if buffer is not None and buffer <= 0:
            raise LoaderError(f"buffer={buffer!r}: expected a positive number of blocks")
        if output not in OUTPUTS:
            raise LoaderError(f"output={output!r}: expected one of {', '.join(OUTPUTS)}")
        _check_extra(output)
        if device is not None and output not in ("torch", "jax"):
            raise LoaderError(f"device={device!r}: needs output='torch' or output='jax'")
        datasets = list(datasets)
        if not datasets:
            raise LoaderError("batches: no datasets given")
        for dataset in datasets:
            if not hasattr(dataset, "X") or not hasattr(dataset, "source"):
                raise LoaderError(
                    f"batches: {dataset!r} is not a store opened by annlayout.open "
                    "(give annlayout.open(location) for each)"
                )
        rank, world_size = _distributed(rank, world_size)
        split(0, rank=rank, world_size=world_size, worker=0, num_workers=1)  # checks rank
        self._options = {
            "datasets": datasets, "batch_size": batch_size, "shuffle": shuffle, "seed": seed,
            "epoch": epoch, "block": block, "buffer": buffer, "obs": tuple(obs),
            "layer": layer, "drop_last": drop_last, "rank": rank, "world_size": world_size,
            "memory": memory, "output": output, "device": device,
        }  # fmt: skip
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, epoch
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.output, self.device = output, device
        self.memory = _parse_memory(memory)
        self.datasets = datasets
        self.matrices = [_matrix(d, layer) for d in datasets]
        _check_same_columns(datasets, self.matrices)
        self._frame = _obs_frame(datasets, tuple(obs)) if obs else None
        self._offsets = np.cumsum([0, *(m.shape[0] for m in self.matrices)])
        self._blocks, self._nbytes = self._make_blocks(block)
        self._buffer_blocks = buffer
        self._buffer_rows = BUFFER_BATCHES * batch_size
        largest = int(self._nbytes.max()) if self._nbytes.size else 0
        if largest * BUFFERS_HELD > self.memory:
            where = self.datasets[int(self._blocks[int(self._nbytes.argmax()), 0])].source
            raise LoaderError(
                f"{where}: one block needs {_mib(largest)} ({BUFFERS_HELD} held: one a kept "
                f"batch views, one consumed, one read ahead twice), more than memory={memory!r} "
                "allows; give a smaller block= or a larger memory="
            )

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        """Rebuilt from its options where it is unpickled (datasets pickle as their
        locations): a DataLoader started by spawn sends its dataset to each worker."""
        return _rebuild, ({**self._options, "epoch": self.epoch},)

    def __repr__(self) -> str:
        sources = ", ".join(d.source for d in self.datasets)
        return (
            f"annlayout.Batches([{sources}], batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, seed={self.seed}, epoch={self.epoch})"
        )

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration follows (as DistributedSampler's)."""
        self.epoch = epoch

    # -- the blocks of an epoch ----------------------------------------------------------

    def _make_blocks(self, block: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Every block as (source, start, stop) rows, and the bytes each holds once read."""
        found, sizes = [], []
        for number, matrix in enumerate(self.matrices):
            n = matrix.shape[0]
            starts = matrix.chunk_starts() if block is None else None
            if starts is not None:
                starts = whole_chunk_runs(starts)
            else:
                length = block or UNCHUNKED_BLOCK
                starts = np.unique(np.concatenate([np.arange(0, n, length), [0, n]]))
            if n == 0:
                continue
            bounds = np.stack([np.full(starts.size - 1, number), starts[:-1], starts[1:]], 1)
            found.append(bounds.astype(np.int64))
            sizes.append(_block_bytes(matrix, starts))
        if not found:
            return np.zeros((0, 3), np.int64), np.zeros(0, np.int64)
        return np.concatenate(found), np.concatenate(sizes)

    def _order(self) -> np.ndarray:
        """The epoch's blocks in reading order: shuffled from ``(seed, epoch)`` alone, so
        every rank and worker draws the same order and :func:`split` shares it out."""
        if not self.shuffle:
            return np.arange(len(self._blocks))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self._blocks))

    def _share(self, worker: int, num_workers: int) -> np.ndarray:
        order = self._order()
        return order[
            split(
                order.size,
                rank=self.rank,
                world_size=self.world_size,
                worker=worker,
                num_workers=num_workers,
            )
        ]

    def _groups(self, share: np.ndarray) -> list[np.ndarray]:
        """The share's blocks cut into buffers: ``buffer`` blocks (or enough rows for
        ``BUFFER_BATCHES`` batches), each within the memory a buffer may hold."""
        budget = self.memory // BUFFERS_HELD
        groups: list[np.ndarray] = []
        current: list[int] = []
        rows = nbytes = 0
        for block in share.tolist():
            size = int(self._nbytes[block])
            length = int(self._blocks[block, 2] - self._blocks[block, 1])
            full = (
                len(current) >= self._buffer_blocks
                if self._buffer_blocks is not None
                else rows >= self._buffer_rows
            )
            if current and (full or nbytes + size > budget):
                groups.append(np.array(current))
                current, rows, nbytes = [], 0, 0
            current.append(block)
            rows += length
            nbytes += size
        if current:
            groups.append(np.array(current))
        return groups

    def _worker(self) -> tuple[int, int]:
        """This process's DataLoader worker and their number (0, 1 outside one)."""
        if "torch" in sys.modules:  # a worker process has imported it: no import otherwise
            info = sys.modules["torch"].utils.data.get_worker_info()
            if info is not None:
                return int(info.id), int(info.num_workers)
        return 0, 1

    def __len__(self) -> int:
        return self.count(*self._worker())

    def count(self, worker: int = 0, num_workers: int = 1) -> int:
        """Batches one worker of ``num_workers`` yields in this rank per epoch. With
        ``drop_last``, every rank yields as many full batches as the rank with the fewest:
        distributed training steps together (DDP waits for every rank at each step)."""
        order = self._order()

        def rows(rank: int) -> int:
            where = split(
                order.size,
                rank=rank,
                world_size=self.world_size,
                worker=worker,
                num_workers=num_workers,
            )
            share = order[where]
            return int(np.sum(self._blocks[share, 2] - self._blocks[share, 1]))

        if not self.drop_last:
            return -(-rows(self.rank) // self.batch_size)
        return min(rows(rank) for rank in range(self.world_size)) // self.batch_size

    # -- iteration ----------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_worker(*self._worker())

    def iter_worker(self, worker: int = 0, num_workers: int = 1) -> Iterator[Batch]:
        """The batches of one worker of ``num_workers`` (what ``iter()`` gives inside a
        DataLoader worker), in this rank: for tests and for launchers of one's own. The
        async core (:meth:`aiter_worker`) driven on zarr's event loop thread, whose loop
        keeps reading the next buffer while the caller works on a batch."""
        return _drive(self.aiter_worker(worker, num_workers))

    async def aiter_worker(self, worker: int = 0, num_workers: int = 1) -> AsyncIterator[Batch]:
        """:meth:`iter_worker` as an async iterator on the running event loop: each buffer
        is fetched there (the next one while the current one's batches are consumed) and
        decoded and shuffled on the read pool's threads."""
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, num_workers])
        buffers = self.buffers(worker, num_workers)
        limit = self.count(worker, num_workers) if self.drop_last else None
        read_so_far = 0

        async def read(buffer: list[tuple[int, np.ndarray]]) -> list[_Piece]:
            nonlocal read_so_far
            piece = await self._aread(buffer, rng)
            segments = await self._asegments(piece, read_so_far)
            read_so_far += len(piece)
            return segments

        yielded = 0
        async for batch in self._cut(_read_ahead(buffers, read)):
            if limit is not None and yielded >= limit:
                return
            yield batch
            yielded += 1

    def buffers(self, worker: int = 0, num_workers: int = 1) -> list[list[tuple[int, np.ndarray]]]:
        """What one worker reads this epoch, buffer by buffer: per store (its position in
        the datasets given), the rows read together, sorted (each chunk read once)."""
        found = []
        for group in self._groups(self._share(worker, num_workers)):
            bounds = self._blocks[group]
            buffer = []
            for source in np.unique(bounds[:, 0]).tolist():
                mine = bounds[bounds[:, 0] == source]
                mine = mine[np.argsort(mine[:, 1])]
                rows = np.concatenate([np.arange(a, b) for _, a, b in mine.tolist()])
                buffer.append((source, rows))
            found.append(buffer)
        return found

    async def _aread(
        self, buffer: list[tuple[int, np.ndarray]], rng: np.random.Generator
    ) -> _Piece:
        """A buffer's rows, one coalesced read per store (the stores at once), with the
        order its batches take them in when shuffling."""
        xs = await asyncio.gather(*(_atake(self.matrices[source], rows) for source, rows in buffer))
        piece = _concat(
            [
                _Piece(x, rows, np.full(rows.size, source, np.int32))
                for x, (source, rows) in zip(xs, buffer, strict=True)
            ]
        )
        if self.shuffle:
            piece.order = rng.permutation(len(piece))
        return piece

    async def _asegments(self, piece: _Piece, before: int) -> list[_Piece]:
        """A buffer's rows in the order batches take them, cut where batches begin (after
        ``before`` rows of earlier buffers, so its first segment completes the batch they
        left open). The shuffle is one gather per read-pool thread, each of a run of whole
        batches into one new array (scipy's row gather, or numpy's ``take``), and the
        batches are views of it: one allocation per run, not per batch, so the gathered
        bytes are written once into memory the kernel maps in large pages (per-batch
        arrays of a few MB faulted in every 4 KiB page, which cost as much as the copy)."""
        size, n = self.batch_size, len(piece)
        bounds = np.unique(np.r_[0, np.arange((-before) % size, n, size), n])
        if bounds.size <= 2 and piece.order is None:
            return [piece] if n else []
        runs = np.array_split(np.arange(bounds.size - 1), min(_workers(), bounds.size - 1))
        spans = [(int(bounds[r[0]]), int(bounds[r[-1] + 1])) for r in runs if r.size]
        loop = asyncio.get_running_loop()
        gathered = await asyncio.gather(
            *(loop.run_in_executor(read_pool(), piece.gather, a, b) for a, b in spans)
        )
        segments = []
        for (a, _), part, run in zip(spans, gathered, runs, strict=False):
            for k in run.tolist():
                segments.append(part.view(int(bounds[k]) - a, int(bounds[k + 1]) - a))
        return segments

    async def _cut(self, buffers: AsyncIterator[list[_Piece]]) -> AsyncIterator[Batch]:
        """Batches of ``batch_size`` rows from the buffers' segments (cut where batches
        begin): a segment shorter than a batch is joined with the next."""
        size, held = self.batch_size, list[_Piece]()
        async for segments in buffers:
            for segment in segments:
                if not held and len(segment) == size:
                    yield self._batch(segment)
                    continue
                held.append(segment)
                if sum(len(p) for p in held) == size:
                    yield self._batch(_concat(held))
                    held = []
        if held and not self.drop_last:
            yield self._batch(_concat(held))

    def _batch(self, piece: _Piece) -> Batch:
        frame = None
        if self._frame is not None:
            frame = self._frame.iloc[self._offsets[piece.source] + piece.index]
        return Batch(_output(piece.X, self.output, self.device), frame, piece.index, piece.source)

    def aiter(self) -> AsyncBatches:
        """This epoch as an async iterable (``async for batch in ...``)."""
        return AsyncBatches(lambda: self)


class AsyncBatches:
    """``async for`` over :class:`Batches`: made, and each ``next`` run, on a worker
    thread, so the event loop keeps running while the store's offsets and each buffer are
    read and decoded, and zarr's own loop is never entered from the caller's thread."""

    def __init__(self, make: Callable[[], Batches]):
        self._make = make
        self._batches: Batches | None = None
        self._epoch: int | None = None

    async def prepare(self) -> Batches:
        """The :class:`Batches` behind this (made on a worker thread on first use)."""
        made = self._batches
        if made is None:
            made = self._batches = await asyncio.to_thread(self._make)
        if self._epoch is not None:
            made.set_epoch(self._epoch)
        return made

    def __len__(self) -> int:
        """Batches per epoch; reads the store's offsets here if no iteration has (from a
        coroutine, ``await prepare()`` first)."""
        made = self._batches
        if made is None:
            made = self._batches = self._make()
        return len(made)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        if self._batches is not None:
            self._batches.set_epoch(epoch)

    async def __aiter__(self) -> AsyncIterator[Batch]:
        made = await self.prepare()
        async for batch in made.aiter_worker(*made._worker()):
            yield batch


def abatches(datasets: Sequence[Any], batch_size: int = 4096, **options: Any) -> AsyncBatches:
    """:func:`batches` as an async iterable: ``async for batch in abatches(...)``."""
    return AsyncBatches(partial(batches, datasets, batch_size, **options))


def _rebuild(options: dict[str, Any]) -> Batches:
    options = dict(options)
    return batches(options.pop("datasets"), options.pop("batch_size"), **options)


# -- read-ahead ------------------------------------------------------------------------


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


async def _read_ahead(
    groups: list[Any], read: Callable[[Any], Awaitable[Any]]
) -> AsyncIterator[Any]:
    """``await read(group)`` for each group in a task of its own, at most one buffer ahead
    of the one the caller holds; a read's error is raised here, in order: no gap is
    skipped. Leaving early cancels the task."""
    if not groups:
        return
    ready: asyncio.Queue[Any] = asyncio.Queue()
    slots = asyncio.Semaphore(2)  # the buffer consumed and the one read ahead

    async def produce() -> None:
        try:
            for group in groups:
                await slots.acquire()
                ready.put_nowait(await read(group))
            ready.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # handed to the consumer, raised there
            ready.put_nowait(_Failed(error))

    task = asyncio.get_running_loop().create_task(produce())
    try:
        while True:
            item = await ready.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
            del item
            slots.release()  # the batches of this buffer are out: read the one after next
    finally:
        task.cancel()


def _drive(batches: AsyncIterator[Batch]) -> Iterator[Batch]:
    """An async iterator as a sync one: each step run on zarr's event loop thread (its
    loop serves every zarr read of the process), which runs the read-ahead task between
    steps. Leaving early closes it there, which stops the read-ahead."""
    from zarr.core.sync import sync

    try:
        while True:
            try:
                yield sync(_next(batches))
            except StopAsyncIteration:
                return
    finally:
        with suppress(Exception):  # e.g. at interpreter exit, zarr's loop already gone
            sync(batches.aclose())  # type: ignore[attr-defined]


async def _next(batches: AsyncIterator[Batch]) -> Batch:
    return await anext(batches)


async def _atake(matrix: Any, rows: np.ndarray) -> Any:
    """Rows of a matrix awaited: natively where it can (``Matrix.atake``), else on a worker
    thread (a legacy raw's X, in memory)."""
    if hasattr(matrix, "atake"):
        return await matrix.atake(rows)
    return await asyncio.to_thread(matrix.take, rows)


# -- helpers -----------------------------------------------------------------------------


def _matrix(dataset: Any, layer: str | None) -> Any:
    """The dataset's X, or the layer asked for, as a matrix the loader can read by rows."""
    if layer is None:
        matrix = dataset.X
        if matrix is None:
            layers = ", ".join(dataset.layers) or "none"
            raise LoaderError(f"{dataset.source}: the store has no X (layers: {layers})")
        name = "X"
    else:
        if layer not in dataset.layers:
            layers = ", ".join(dataset.layers) or "none"
            raise LoaderError(f"{dataset.source}: no layer {layer!r} (layers: {layers})")
        matrix, name = dataset.layers[layer], f"layers/{layer}"
    if not matrix.is_matrix:
        raise LoaderError(f"{dataset.source}: {name} is a {matrix.encoding}, not a matrix")
    if "csc" in matrix.orientations and "csr" not in matrix.orientations:
        raise LoaderError(
            f"{dataset.source}: {name} is stored as CSC only, so every block of rows would "
            "read all of it; add a CSR orientation (annlayout apply ml-minibatch)"
        )
    if len(matrix.shape) != 2:
        raise LoaderError(f"{dataset.source}: {name} has {len(matrix.shape)} dimensions, not 2")
    return matrix


def _check_same_columns(datasets: list[Any], matrices: list[Any]) -> None:
    """Stores read as one must hold the same genes in the same order."""
    first = datasets[0]
    for dataset, matrix in zip(datasets[1:], matrices[1:], strict=True):
        if matrix.shape[1] != matrices[0].shape[1] or not first.var.index.equals(dataset.var.index):
            raise LoaderError(
                f"{dataset.source}: its var names differ from {first.source}'s; stores read "
                "as one need the same genes in the same order (annlayout concat aligns them)"
            )


def _obs_frame(datasets: list[Any], columns: tuple[str, ...]) -> pd.DataFrame:
    """The requested obs columns of every store, one after the other, read once."""
    frames = []
    for dataset in datasets:
        available = dataset.obs.columns
        for column in columns:
            if column not in available:
                raise LoaderError(
                    f"{dataset.source}: no obs column {column!r} "
                    f"(columns: {', '.join(map(str, available)) or 'none'})"
                )
        # the columns' own arrays: categoricals and nullable dtypes stay as anndata reads them
        frame = pd.DataFrame({c: dataset.obs[c].array for c in columns})
        frame.index = dataset.obs.index
        frames.append(frame)
    return frames[0] if len(frames) == 1 else pd.concat(frames)


def _block_bytes(matrix: Any, starts: np.ndarray) -> np.ndarray:
    """Bytes each block between ``starts`` holds once read (values, indices, offsets)."""
    rows = np.diff(starts)
    if not matrix.sparse:
        return rows * int(np.prod(matrix.shape[1:])) * matrix.dtype.itemsize
    nnz = np.diff(matrix.indptr()[starts])
    index_bytes = 4 if matrix.nnz < 2**31 else 8
    return nnz * (matrix.dtype.itemsize + index_bytes) + rows * index_bytes


def whole_chunk_runs(starts: np.ndarray, rows: int = BLOCK_ROWS) -> np.ndarray:
    """Of chunk ``starts`` (0 and the row count included), those that cut the rows into
    runs of whole chunks of at least ``rows`` rows each (the last run may be shorter): the
    default blocks."""
    kept, i, last = [0], 0, starts.size - 1
    while True:
        i = int(np.searchsorted(starts, starts[i] + rows))
        if i >= last:
            break
        kept.append(i)
    kept.append(last)
    return starts[kept]


def _row_view(x: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a CSR matrix or an array, sharing its memory."""
    if not sp.issparse(x):
        return x[start:stop]
    a, b = int(x.indptr[start]), int(x.indptr[stop])
    indptr = x.indptr[start : stop + 1] - a
    data, indices = _Window.of(x.data[a:b]), _Window.of(x.indices[a:b])
    return sp.csr_matrix((data, indices, indptr), shape=(stop - start, x.shape[1]))


class _Window:
    """A view of part of a larger array whose ``base`` is this object, of the view's own
    size: scipy's sparse constructors copy a view that is under half of its ``base``
    (``_prune_array``), which would copy every batch out of its buffer once more."""

    def __init__(self, view: np.ndarray):
        self.__array_interface__ = view.__array_interface__
        self.size, self._keep = view.size, view  # the buffer lives while a batch does

    @classmethod
    def of(cls, view: np.ndarray) -> np.ndarray:
        return np.asarray(cls(view))


def _workers() -> int:
    return int(read_pool()._max_workers)


def _concat(pieces: list[_Piece]) -> _Piece:
    if len(pieces) == 1:
        return pieces[0]
    xs = [p.X for p in pieces]
    x = sp.vstack(xs, format="csr") if sp.issparse(xs[0]) else np.concatenate(xs)
    return _Piece(
        x,
        np.concatenate([p.index for p in pieces]),
        np.concatenate([p.source for p in pieces]),
    )


def _output(x: Any, output: str, device: Any) -> Any:
    """X as asked for: scipy CSR (or the dense array of a dense store), dense numpy, torch
    or jax; on ``device`` where given (cuda: pinned, then copied without blocking)."""
    if output == "scipy":
        return x
    if output == "numpy":
        return x.toarray() if sp.issparse(x) else x
    if output == "torch":
        import torch

        if sp.issparse(x):
            tensor = torch.sparse_csr_tensor(
                torch.from_numpy(x.indptr.astype(np.int64)),
                torch.from_numpy(x.indices.astype(np.int64)),
                torch.from_numpy(x.data),
                size=x.shape,
            )
        else:
            tensor = torch.from_numpy(np.ascontiguousarray(x))
        if device is None:
            return tensor
        if str(device).startswith("cuda") and tensor.layout == torch.strided:
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    import jax
    import jax.numpy as jnp

    if sp.issparse(x):
        from jax.experimental import sparse as jsparse

        array: Any = jsparse.BCSR((x.data, x.indices, x.indptr), shape=x.shape)
    else:
        array = jnp.asarray(x)
    return array if device is None else jax.device_put(array, device)


def torch_installed() -> bool:
    return "torch" in sys.modules or find_spec("torch") is not None


def _check_extra(output: str) -> None:
    message = requirement(output, f"output={output!r}") if output in ("torch", "jax") else None
    if message:
        raise LoaderError(message)


def _torch_batches() -> type[Batches]:
    """:class:`Batches` as a ``torch.utils.data.IterableDataset``, so that
    ``DataLoader(batches, batch_size=None, num_workers=N)`` takes it; made on first use,
    only where torch is installed."""
    global _TORCH_BATCHES
    if _TORCH_BATCHES is None:
        from torch.utils.data import IterableDataset

        _TORCH_BATCHES = type("TorchBatches", (Batches, IterableDataset), {})
    return _TORCH_BATCHES


_TORCH_BATCHES: type[Batches] | None = None


def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size) as given, else torch.distributed's when it is initialised."""
    if rank is None and world_size is None and "torch" in sys.modules:
        distributed = sys.modules["torch"].distributed
        if distributed.is_available() and distributed.is_initialized():
            return int(distributed.get_rank()), int(distributed.get_world_size())
    world = 1 if world_size is None else world_size
    if not isinstance(world, int) or world < 1:
        raise LoaderError(f"world_size={world_size!r}: expected a positive integer")
    return (0 if rank is None else rank), world


def _parse_memory(value: int | str) -> int:
    from pydantic import ByteSize, TypeAdapter

    try:
        size = int(TypeAdapter(ByteSize).validate_python(value))
    except Exception:
        raise LoaderError(f"memory={value!r}: not a byte size (e.g. 1GiB, 512MB)") from None
    if size <= 0:
        raise LoaderError(f"memory={value!r}: expected a positive size")
    return size


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


__all__ = ["AsyncBatches", "Batch", "Batches", "abatches", "batches", "split"]
