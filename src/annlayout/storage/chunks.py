"""Runs of positions of a 1-D zarr array, read as whole chunks fetched and decoded directly.

zarr's orthogonal selection spends about 0.27 ms of Python per chunk (indexing and codec
pipeline bookkeeping on its event loop), with either codec pipeline, sharded or not. A
minibatch of 256 random rows touches a few hundred chunks of ``data`` and of ``indices``, so
that bookkeeping was most of the read. This module reads the chunks itself:

- shard indexes are read once per array handle and kept;
- the touched inner chunks are fetched by byte range: ``os.pread`` on a local store, the
  zarr store's ``get_partial_values`` otherwise (so a counting or remote store sees every
  request), neighbouring ranges of a shard merged into one request when the bytes between
  them cost less time than another round trip (:class:`Link` measures both);
- numcodecs decodes them straight into one output block on a thread pool (blosc, zstd, gzip
  and lz4 release the GIL): from disk in a few batches rather than one task per chunk, from
  a store each request's chunks as soon as it arrives, while later requests stream.

:func:`chunk_reader` returns ``None`` for arrays it does not understand (codecs other than
the bytes codec plus compressors numcodecs knows, filters, non-numeric dtypes); callers read
those through zarr as before.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from annlayout.base.errors import ChunkReadError

Payload = bytes | memoryview  # a chunk's stored bytes: a view into a request's, not a copy
Decoder = Callable[[Payload], Any]


class _Scatter:
    """A chunk of which only parts are wanted (a run starts or ends inside it, or several
    short runs share it): ``(start, stop, destination)`` per part. Decoded on its own, then
    each part copied to its place in the output; whole chunks are decoded in place."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[tuple[int, int, np.ndarray]]):
        self.parts = parts

    def scatter(self, chunk: np.ndarray) -> None:
        for start, stop, destination in self.parts:
            destination[...] = chunk[start:stop]


Target = np.ndarray | _Scatter  # where a decoded chunk goes
EMPTY = 2**64 - 1  # a shard index entry for a chunk that was never written
MIN_GAP, MAX_GAP = 64 * 1024, 16 * 2**20  # remote: bounds of the merge gap (see Link)
SMALL_REQUEST = 64 * 1024  # a batch of requests this small on average times the round trip
FETCH_BUDGET = 64 * 2**20  # remote: bytes a read holds fetched and not yet decoded
MIN_SPAN = 2 * 2**20  # remote: merged requests may always span this much (see Link)
# remote: a merged request carries at most this many times the bytes of the chunks asked
# for: gaps that each cost less than a round trip still add up to whole shards, and on
# object storage every byte is billed (egress) where a request costs a fraction of a cent
MAX_WASTE = 2.0


class Link:
    """What one more request costs on the way to a store, measured from the reads made.

    Two ranges of one object are fetched as one request when the bytes between them take
    less time to transfer than a round trip: the gap is round trip x throughput (20 ms at
    200 MB/s: 4 MB), as long as the merged request stays within ``request_span`` and
    carries at most ``MAX_WASTE`` times the bytes asked for. Batches of small requests
    (shard indexes) time the round trip, batches of chunks the throughput; both are running
    averages, and the gap stays at ``MIN_GAP`` until both are known.
    """

    def __init__(self, concurrency: int = 10):
        self.concurrency = concurrency  # requests zarr keeps in flight (async.concurrency)
        self.rtt: float | None = None
        self.rate: float | None = None  # bytes per second

    def observe(self, requests: int, nbytes: int, seconds: float) -> None:
        if not requests:
            return
        rounds = math.ceil(requests / self.concurrency)
        if nbytes / requests <= SMALL_REQUEST:
            self.rtt = _average(self.rtt, seconds / rounds)
        elif self.rtt is not None:
            transfer = seconds - rounds * self.rtt
            if transfer > 0:
                self.rate = _average(self.rate, nbytes / transfer)

    @property
    def gap(self) -> int:
        if self.rtt is None or self.rate is None:
            return MIN_GAP
        return int(min(MAX_GAP, max(MIN_GAP, self.rtt * self.rate)))

    @property
    def request_span(self) -> int:
        """The most one merged request spans: about a round trip's worth of bytes, so a
        large read is split over concurrent requests instead of one long stream."""
        return max(MIN_SPAN, self.gap)


def _average(old: float | None, new: float) -> float:
    return new if old is None else 0.7 * old + 0.3 * new


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset and cgroup cpusets
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@cache
def read_pool() -> ThreadPoolExecutor:
    """The threads that read and decode chunks (one per usable core), shared with
    :mod:`annlayout.storage.h5`: one pool for every read in a process."""
    return ThreadPoolExecutor(max_workers=_usable_cpus(), thread_name_prefix="annlayout-read")


# A forked child (e.g. a PyTorch DataLoader worker) inherits the pool without its threads:
# it makes its own on first use.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=read_pool.cache_clear)


def _numcodecs_decoder(name: str, config: dict[str, Any]) -> Decoder | None:
    """A numcodecs decoder for a zarr v3 bytes-to-bytes codec, or None if unknown."""
    import numcodecs

    if name == "blosc":
        return numcodecs.Blosc().decode  # blosc frames describe themselves
    if name == "zstd":
        return numcodecs.Zstd().decode
    if name == "gzip":
        return numcodecs.GZip().decode
    if name == "crc32c":
        return _strip_crc32c
    if name.startswith("numcodecs."):  # numcodecs.zarr3 wrappers, e.g. numcodecs.lz4
        try:
            return numcodecs.get_codec({"id": name.removeprefix("numcodecs."), **config}).decode
        except (ValueError, TypeError, KeyError):
            return None
    return None


def _strip_crc32c(buffer: Payload) -> bytes:
    import google_crc32c

    payload, stored = bytes(buffer[:-4]), bytes(buffer[-4:])
    if google_crc32c.value(payload).to_bytes(4, "little") != stored:
        raise ChunkReadError("crc32c checksum mismatch")
    return payload


def _v3_codecs(codecs: Sequence[dict[str, Any]]) -> tuple[str | None, list[Decoder]] | None:
    """(endianness, bytes-to-bytes decoders in decode order) for a v3 codec chain (as JSON)."""
    if not codecs or codecs[0]["name"] != "bytes":
        return None  # e.g. transpose or another array-to-array codec first
    decoders: list[Decoder] = []
    for codec in codecs[1:]:
        decoder = _numcodecs_decoder(codec["name"], codec.get("configuration") or {})
        if decoder is None:
            return None
        decoders.append(decoder)
    return (codecs[0].get("configuration") or {}).get("endian"), decoders[::-1]


class ChunkReader:
    """Reads runs of positions of one 1-D zarr array through whole chunks."""

    def __init__(
        self,
        array: Any,
        *,
        chunk_len: int,
        shard_len: int | None,
        dtype: np.dtype,
        decoders: list[Decoder],
        index_at_end: bool = True,
        index_checksum: bool = False,
    ):
        self.array, self.chunk_len, self.shard_len = array, chunk_len, shard_len
        self.dtype, self.decoders = dtype, decoders
        # blosc decodes straight into the output block: no second copy of every chunk (which
        # for multi-MB chunks is a trip through memory rather than cache)
        self._blosc_last = bool(decoders) and _is_blosc(decoders[-1])
        self.index_at_end, self.index_checksum = index_at_end, index_checksum
        self.fill_value = np.asarray(array.fill_value or 0).astype(dtype)
        self.length = int(array.shape[0])
        self.store = array.store_path.store
        self.prefix = f"{array.store_path.path}/" if array.store_path.path else ""
        self.local_root = _local_root(self.store)
        self.link = Link(_zarr_concurrency())
        self._indexes: dict[int, np.ndarray] = {}
        self._chunks_per_shard = (shard_len // chunk_len) if shard_len else 1

    # -- where chunks are -----------------------------------------------------------------

    def _key(self, object_id: int) -> str:
        return self.prefix + self.array.metadata.encode_chunk_key((object_id,))

    def _locate(self, chunk_ids: np.ndarray) -> list[tuple[str, int, int] | None]:
        """(object key, byte start, byte stop) per chunk; stop -1 means the whole object;
        None for a chunk that was never written."""
        if not self.shard_len:
            return [(self._key(int(c)), 0, -1) for c in chunk_ids]
        shards, inner = np.divmod(chunk_ids, self._chunks_per_shard)
        self._load_indexes(np.unique(shards))
        located: list[tuple[str, int, int] | None] = []
        for shard, position in zip(shards.tolist(), inner.tolist(), strict=True):
            offset, nbytes = self._indexes[shard][position]
            if offset == EMPTY and nbytes == EMPTY:
                located.append(None)
            else:
                located.append((self._key(shard), int(offset), int(offset + nbytes)))
        return located

    def load_indexes(self) -> None:
        """Every shard index of the array (a no-op without shards)."""
        if self.shard_len:
            self._load_indexes(np.arange(-(-self.length // self.shard_len)))

    def _load_indexes(self, shards: np.ndarray) -> None:
        missing = [int(s) for s in shards if int(s) not in self._indexes]
        if not missing:
            return
        raw = self._fetch_indexes([self._key(s) for s in missing], self._index_size)
        self._keep_indexes(missing, raw)

    def _keep_indexes(self, missing: list[int], raw: Sequence[Payload | None]) -> None:
        size = self._index_size
        for shard, buffer in zip(missing, raw, strict=True):
            if buffer is None:  # shard never written: every chunk is fill
                self._indexes[shard] = np.full((self._chunks_per_shard, 2), EMPTY, np.uint64)
                continue
            if len(buffer) != size:
                raise ChunkReadError(f"{self._key(shard)}: truncated shard index")
            if self.index_checksum:
                try:
                    buffer = _strip_crc32c(buffer)
                except ChunkReadError as error:
                    raise ChunkReadError(f"{self._key(shard)}: shard index {error}") from None
            self._indexes[shard] = np.frombuffer(buffer, "<u8").reshape(-1, 2)

    async def aload_indexes(self) -> None:
        """:meth:`load_indexes` awaited on the caller's event loop."""
        if self.shard_len:
            await self._aload_indexes(np.arange(-(-self.length // self.shard_len)))

    async def _aload_indexes(self, shards: np.ndarray) -> None:
        import asyncio

        missing = [int(s) for s in shards if int(s) not in self._indexes]
        if not missing:
            return
        size, keys = self._index_size, [self._key(s) for s in missing]
        if self.local_root is not None:
            raw = await asyncio.get_running_loop().run_in_executor(
                read_pool(), self._fetch_indexes, keys, size
            )
        else:
            raw = await _astore_gets(self.store, self._index_requests(keys, size), self.link)
        self._keep_indexes(missing, raw)

    @property
    def _index_size(self) -> int:
        return self._chunks_per_shard * 16 + (4 if self.index_checksum else 0)

    def _index_requests(self, keys: list[str], size: int) -> list[tuple[str, Any]]:
        from zarr.abc.store import RangeByteRequest, SuffixByteRequest

        request = SuffixByteRequest(size) if self.index_at_end else RangeByteRequest(0, size)
        return [(key, request) for key in keys]

    def _fetch_indexes(self, keys: list[str], size: int) -> Sequence[Payload | None]:
        if self.local_root is not None:
            return [_pread_index(self.local_root / key, size, self.index_at_end) for key in keys]
        return _store_gets(self.store, self._index_requests(keys, size), self.link)

    # -- reading --------------------------------------------------------------------------

    def read(self, runs: Sequence[tuple[int, int]], dtype: Any = None) -> np.ndarray:
        """The positions of ``[start, stop)`` runs, concatenated (runs sorted, disjoint), as
        ``dtype`` (default the array's): cast chunk by chunk on the decoding threads."""
        out, chunk_ids, targets = self._plan(runs, dtype)
        if chunk_ids.size:
            self._decode_into(chunk_ids, targets)
        return out

    async def aread(self, runs: Sequence[tuple[int, int]], dtype: Any = None) -> np.ndarray:
        """:meth:`read` awaited on the caller's event loop: shard indexes and chunks are
        fetched there (obstore's async gets; stores bound to zarr's loop, fsspec's, through
        it without blocking the caller), files are read and chunks decoded on the read
        pool's threads, so the loop is never blocked and zarr's ``sync`` never entered."""
        out, chunk_ids, targets = self._plan(runs, dtype)
        if chunk_ids.size:
            await self._adecode_into(chunk_ids, targets)
        return out

    def _plan(
        self, runs: Sequence[tuple[int, int]], dtype: Any
    ) -> tuple[np.ndarray, np.ndarray, list[Target]]:
        """The output of a read, the chunks it touches and where each one's values go."""
        dtype = np.dtype(dtype or self.dtype)
        if not runs:
            return np.zeros(0, dtype), np.zeros(0, np.int64), []
        starts = np.fromiter((a for a, _ in runs), np.int64, len(runs))
        stops = np.fromiter((b for _, b in runs), np.int64, len(runs))
        if stops.max() > self.length or starts.min() < 0:
            raise IndexError(f"positions beyond {self.array.name} of length {self.length}")
        length = self.chunk_len
        first, last = starts // length, (stops - 1) // length
        counts = last - first + 1
        # every (run, chunk) pair: the chunks from first to last of each run, in order
        run_of = np.repeat(np.arange(len(runs)), counts)
        offsets = np.repeat(np.cumsum(counts) - counts, counts)
        pair_chunk = np.repeat(first, counts) + np.arange(counts.sum()) - offsets
        lo = np.maximum(starts[run_of], pair_chunk * length)
        hi = np.minimum(stops[run_of], (pair_chunk + 1) * length)
        run_at = np.cumsum(stops - starts) - (stops - starts)  # each run's place in the output
        at = run_at[run_of] + lo - starts[run_of]
        out = np.empty(int(np.sum(stops - starts)), dtype)
        # runs are sorted and disjoint, so the pairs' chunks come in order
        chunk_ids, pair0, pairs = np.unique(pair_chunk, return_index=True, return_counts=True)
        whole = (
            (pairs == 1)
            & (lo[pair0] == chunk_ids * length)
            & (hi[pair0] == (chunk_ids + 1) * length)
        )
        targets: list[np.ndarray | _Scatter] = []
        for k, p in enumerate(pair0.tolist()):
            if whole[k]:  # decoded straight to its place in the output
                targets.append(out[int(at[p]) : int(at[p]) + length])
                continue
            base = int(chunk_ids[k]) * length
            targets.append(
                _Scatter(
                    [
                        (
                            int(lo[q]) - base,
                            int(hi[q]) - base,
                            out[int(at[q]) : int(at[q] + hi[q] - lo[q])],
                        )
                        for q in range(p, p + int(pairs[k]))
                    ]
                )
            )
        return out, chunk_ids, targets

    def _decode_into(self, chunk_ids: np.ndarray, targets: list[np.ndarray | _Scatter]) -> None:
        located = self._locate(chunk_ids)
        if self.local_root is None:
            self._fetch_and_decode(located, targets)
        else:
            self._run(self._read_local_batch, list(zip(located, targets, strict=True)))

    async def _adecode_into(self, chunk_ids: np.ndarray, targets: list[Target]) -> None:
        import asyncio

        shards = np.unique(chunk_ids // self._chunks_per_shard) if self.shard_len else None
        if shards is not None and any(int(s) not in self._indexes for s in shards):
            await self._aload_indexes(shards)
        located = self._locate(chunk_ids)
        jobs = list(zip(located, targets, strict=True))
        loop = asyncio.get_running_loop()
        if self.local_root is not None:
            await asyncio.gather(
                *(
                    loop.run_in_executor(read_pool(), self._read_local_batch, batch)
                    for batch in self._batches(jobs)
                )
            )
            return
        never = [(None, target) for where, target in jobs if where is None]
        if never:
            await loop.run_in_executor(read_pool(), self._decode_batch, never)
        requests = merged_requests(located, self.link.gap, self.link.request_span)
        start = time.perf_counter()
        nbytes, last_arrival = await self._stream(requests, located, targets)
        self.link.observe(len(requests), nbytes, last_arrival - start)

    def _fetch_and_decode(
        self, located: list[tuple[str, int, int] | None], outputs: list[Target]
    ) -> None:
        """Fetch the merged requests and decode each one's chunks as it arrives: a scan
        then takes about as long as the link needs for its bytes (the decoding overlaps
        the transfer, and no request waits for the slowest of a batch)."""
        from zarr.core.sync import sync

        never = [(None, outputs[i]) for i, where in enumerate(located) if where is None]
        self._decode_batch(never)  # never written (unsharded): fill
        requests = merged_requests(located, self.link.gap, self.link.request_span)
        start = time.perf_counter()
        nbytes, last_arrival = sync(self._stream(requests, located, outputs))
        self.link.observe(len(requests), nbytes, last_arrival - start)

    async def _stream(
        self,
        requests: list[Request],
        located: list[tuple[str, int, int] | None],
        outputs: list[Target],
    ) -> tuple[int, float]:
        """Requests in order, ``async.concurrency`` in flight and at most ``FETCH_BUDGET``
        bytes fetched but not yet decoded (the memory a read holds beside its output); each
        decoded on the read pool. Returns the bytes fetched and when the last arrived."""
        import asyncio

        loop = asyncio.get_running_loop()
        fetch = _fetcher(self.store)
        in_flight = asyncio.Semaphore(_zarr_concurrency())
        held = _Budget(FETCH_BUDGET)
        nbytes, last_arrival = 0, 0.0

        async def one(request: Request, size: int) -> None:
            nonlocal nbytes, last_arrival
            try:
                async with in_flight:
                    data = await fetch(request.key, request.byte_range)
                nbytes += 0 if data is None else len(data)
                last_arrival = time.perf_counter()
                jobs = list(_payloads(request, data, located, outputs))
                await loop.run_in_executor(read_pool(), self._decode_batch, jobs)
            finally:
                await held.release(size)

        try:
            async with asyncio.TaskGroup() as tasks:
                for request in requests:
                    size = request.size if request.stop >= 0 else self._chunk_nbytes
                    await held.acquire(size)
                    tasks.create_task(one(request, size))
        except BaseExceptionGroup as failed:  # the first failure, as a read raises it
            raise failed.exceptions[0] from None
        return nbytes, last_arrival

    @property
    def _chunk_nbytes(self) -> int:
        return self.chunk_len * self.dtype.itemsize

    def _run(self, work: Callable[[list[Any]], None], jobs: list[tuple[Any, Target]]) -> None:
        """``work`` over ``jobs`` on the decoding pool, in a few tasks per worker."""
        batches = self._batches(jobs)
        if len(batches) == 1:
            work(batches[0])
            return
        for future in [read_pool().submit(work, batch) for batch in batches]:
            future.result()

    @staticmethod
    def _batches(jobs: list[tuple[Any, Target]]) -> list[list[tuple[Any, Target]]]:
        """``jobs`` cut into a few tasks per decoding worker: balanced, cheap to hand out."""
        workers = read_pool()._max_workers
        if len(jobs) <= 2 or workers == 1:
            return [jobs]
        size = -(-len(jobs) // (4 * workers))
        return [jobs[i : i + size] for i in range(0, len(jobs), size)]

    def _read_local_batch(self, jobs: list[tuple[tuple[str, int, int] | None, Target]]) -> None:
        """pread each chunk; jobs come in key order, so one file is open at a time (unsharded
        arrays are a file per chunk: keeping them all open would exhaust descriptors)."""
        assert self.local_root is not None
        open_key, fd = None, -1
        payloads: list[tuple[bytes | None, Target]] = []
        try:
            for where, out in jobs:
                if where is None:
                    payloads.append((None, out))
                    continue
                key, start, stop = where
                if key != open_key:
                    if fd >= 0:
                        os.close(fd)
                    open_key, fd = key, -1
                    with suppress(FileNotFoundError):  # never written: stays -1
                        fd = os.open(self.local_root / key, os.O_RDONLY)
                if fd < 0:  # never written: fill; but not a chunk its shard index lists
                    if stop >= 0:
                        raise ChunkReadError(f"{key}: listed in its shard index but not there")
                    payloads.append((None, out))
                    continue
                size = os.fstat(fd).st_size - start if stop < 0 else stop - start
                payloads.append((os.pread(fd, size, start), out))
        finally:
            if fd >= 0:
                os.close(fd)
        self._decode_batch(payloads)

    def _decode_batch(self, jobs: Sequence[tuple[Payload | None, Target]]) -> None:
        for payload, target in jobs:
            if isinstance(target, np.ndarray):
                self._decode(payload, target)
            else:  # part of the chunk is wanted: decoded whole, then its parts copied
                chunk = np.empty(self.chunk_len, self.dtype)
                self._decode(payload, chunk)
                target.scatter(chunk)

    def _decode(self, payload: Payload | None, out: np.ndarray) -> None:
        """One chunk's bytes decoded into ``out`` (its fill where never written)."""
        if payload is None:
            out[...] = self.fill_value
            return
        if self._blosc_last:
            for decoder in self.decoders[:-1]:
                payload = decoder(payload)
            if out.dtype == self.dtype:
                self._blosc_into(payload, out)
            else:
                decoded = np.empty(out.size, self.dtype)
                self._blosc_into(payload, decoded)
                out[...] = decoded
            return
        for decoder in self.decoders:
            payload = decoder(payload)
        decoded = np.frombuffer(payload, self.dtype)
        if decoded.size != out.size:
            raise ChunkReadError(
                f"{self.array.name}: a chunk decoded to {decoded.size} values, expected {out.size}"
            )
        out[...] = decoded

    def _blosc_into(self, payload: Payload, out: np.ndarray) -> None:
        from numcodecs import blosc

        nbytes = int.from_bytes(payload[4:8], "little")  # blosc header: uncompressed size
        if len(payload) < 16 or nbytes != out.nbytes:
            raise ChunkReadError(
                f"{self.array.name}: a chunk decodes to {nbytes} bytes, expected {out.nbytes}"
            )
        blosc.decompress(payload, out)


def _is_blosc(decoder: Decoder) -> bool:
    import numcodecs

    return isinstance(getattr(decoder, "__self__", None), numcodecs.Blosc)


def chunk_reader(array: Any) -> ChunkReader | None:
    """A :class:`ChunkReader` for a 1-D numeric zarr array, or None to read through zarr.

    Decided from the array's metadata as stored (the zarr v2/v3 JSON), which does not change
    between zarr releases the way its Python classes do.
    """
    if not hasattr(array, "metadata") or len(array.shape) != 1:
        return None
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "biuf":
        return None
    metadata = array.metadata
    if metadata.zarr_format == 2:
        if metadata.filters:
            return None
        compressor = metadata.compressor
        decoders = [compressor.decode] if compressor is not None else []
        stored = np.dtype(metadata.to_dict()["dtype"])
        return ChunkReader(
            array, chunk_len=metadata.chunks[0], shard_len=None, dtype=stored, decoders=decoders
        )
    spec = _json(metadata.to_dict())
    grid = spec["chunk_grid"]
    if grid.get("name") != "regular":
        return None
    grid_len = int(grid["configuration"]["chunk_shape"][0])
    codecs = spec["codecs"]
    if len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed":
        sharding = codecs[0]["configuration"]
        inner = _v3_codecs(sharding["codecs"])
        index = sharding["index_codecs"]
        if inner is None or [c["name"] for c in index] not in (["bytes"], ["bytes", "crc32c"]):
            return None
        if (index[0].get("configuration") or {}).get("endian") == "big":
            return None
        endian, decoders = inner
        return ChunkReader(
            array,
            chunk_len=int(sharding["chunk_shape"][0]),
            shard_len=grid_len,
            dtype=dtype.newbyteorder(">" if endian == "big" else "<"),
            decoders=decoders,
            index_at_end=sharding.get("index_location", "end") == "end",
            index_checksum=index[-1]["name"] == "crc32c",
        )
    plain = _v3_codecs(codecs)
    if plain is None:
        return None
    endian, decoders = plain
    return ChunkReader(
        array,
        chunk_len=grid_len,
        shard_len=None,
        dtype=dtype.newbyteorder(">" if endian == "big" else "<"),
        decoders=decoders,
    )


def _json(value: Any) -> Any:
    """Metadata as plain JSON: codec objects and enums inside ``to_dict()`` output resolved."""
    if hasattr(value, "to_dict"):
        return _json(value.to_dict())
    if isinstance(value, dict):
        return {key: _json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json(item) for item in value]
    return getattr(value, "value", value)


def _local_root(store: Any) -> Path | None:
    from zarr.storage import LocalStore

    return Path(store.root) if type(store) is LocalStore else None


def _pread_index(path: Path, size: int, at_end: bool) -> bytes | None:
    try:
        with open(path, "rb") as file:
            if at_end:
                file.seek(-size, os.SEEK_END)
            return file.read(size)
    except FileNotFoundError:
        return None
    except OSError:  # shorter than its index
        raise ChunkReadError(f"{path}: truncated shard") from None


def _zarr_concurrency() -> int:
    import zarr

    return int(zarr.config.get("async.concurrency") or 10)


def _store_gets(
    store: Any, requests: list[tuple[str, Any]], link: Link | None = None
) -> list[memoryview | None]:
    """:func:`_astore_gets` on zarr's event loop."""
    from zarr.core.sync import sync

    return sync(_astore_gets(store, requests, link))


async def _astore_gets(
    store: Any, requests: list[tuple[str, Any]], link: Link | None = None
) -> list[memoryview | None]:
    """Gets of zarr byte requests (shard indexes), all at once, at most zarr's
    ``async.concurrency`` in flight (obstore and fsspec retry transient errors)."""
    import asyncio

    fetch = _fetcher(store)
    limit = asyncio.Semaphore(_zarr_concurrency())

    async def one(key: str, byte_range: Any) -> memoryview | None:
        async with limit:
            return await fetch(key, byte_range)

    start = time.perf_counter()
    payloads = list(await asyncio.gather(*(one(key, r) for key, r in requests)))
    if link is not None:
        nbytes = sum(len(p) for p in payloads if p is not None)
        link.observe(len(requests), nbytes, time.perf_counter() - start)
    return payloads


async def on_zarr_loop(coroutine: Awaitable[Any]) -> Any:
    """``await coroutine`` run on zarr's event loop, the caller's loop left free meanwhile:
    for stores whose clients are bound to the loop they were made on (fsspec's aiohttp
    sessions are made on zarr's, as zarr opens them)."""
    import asyncio

    from zarr.core.sync import _get_loop

    loop = _get_loop()
    if asyncio.get_running_loop() is loop:
        return await coroutine
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))  # type: ignore[arg-type]


def _obstore_of(store: Any) -> Any:
    """The obstore client under a zarr ``ObjectStore`` (not under a wrapper, which counts
    what passes through it), or None."""
    if type(store).__name__ != "ObjectStore" or not type(store).__module__.startswith("zarr"):
        return None
    return getattr(store, "store", None)


def _fetcher(store: Any) -> Callable[[str, Any], Awaitable[memoryview | None]]:
    """``await fetch(key, byte_range)``: a zarr byte request (a range, a suffix, or None for
    the whole object) of one object, as a view of the bytes that arrived; None for a missing
    object. One request each: through obstore directly where the store is zarr's
    ObjectStore (which hands a key's ranges to obstore's ``get_ranges``, merging any within
    1 MiB, adjacent ones too: scattered chunks would become whole shards read and billed,
    and a scan one long stream per shard, where :func:`merged_requests` chose otherwise);
    through the store's ``get`` otherwise (so a counting store sees each)."""
    from zarr.abc.store import RangeByteRequest
    from zarr.core.buffer import default_buffer_prototype

    client = _obstore_of(store)
    if client is None:

        async def from_store(key: str, byte_range: Any) -> memoryview | None:
            buffer = await on_zarr_loop(store.get(key, default_buffer_prototype(), byte_range))
            return None if buffer is None else memoryview(buffer.to_bytes())

        return from_store

    import obstore

    async def from_obstore(key: str, byte_range: Any) -> memoryview | None:
        try:
            if isinstance(byte_range, RangeByteRequest):
                data = await obstore.get_range_async(
                    client, key, start=byte_range.start, end=byte_range.end
                )
                return memoryview(data)
            options: Any = None
            if byte_range is not None:  # a suffix: a shard index at the end
                options = {"range": {"suffix": byte_range.suffix}}
            response = await obstore.get_async(client, key, options=options)
            return memoryview(await response.bytes_async())
        except FileNotFoundError:
            return None

    return from_obstore


class Request(NamedTuple):
    """One ranged GET: ``[start, stop)`` of an object (stop -1: the whole object), and the
    positions in ``located`` of the chunks it carries."""

    key: str
    start: int
    stop: int
    members: list[int]

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def byte_range(self) -> Any:
        from zarr.abc.store import RangeByteRequest

        return RangeByteRequest(self.start, self.stop) if self.stop >= 0 else None


def merged_requests(
    located: list[tuple[str, int, int] | None], gap: int, span: int
) -> list[Request]:
    """The requests for chunks at ``located``, in key and byte order: neighbouring ranges of
    one object fetched together when the bytes between them are at most ``gap`` (cheaper
    than a request, see :class:`Link`), the merged range at most ``span`` long and carrying
    at most ``MAX_WASTE`` times the bytes asked for. Pure: no IO."""
    requests: list[Request] = []
    order = sorted(
        (i for i, where in enumerate(located) if where is not None),
        key=lambda i: (located[i][0], located[i][1]),  # type: ignore[index]
    )
    useful = 0  # bytes of the last request's own chunks
    for i in order:
        key, start, stop = located[i]  # type: ignore[misc]
        last = requests[-1] if requests else None
        if (
            last
            and last.key == key
            and stop >= 0
            and last.stop >= 0
            and start - last.stop <= gap
            and stop - last.start <= span
            and stop - last.start <= MAX_WASTE * (useful + stop - start)
        ):
            last.members.append(i)
            useful += stop - start
            requests[-1] = last._replace(stop=max(last.stop, stop))
        else:
            requests.append(Request(key, start, stop, [i]))
            useful = max(0, stop - start)
    return requests


def _payloads(
    request: Request,
    data: memoryview | None,
    located: list[tuple[str, int, int] | None],
    outputs: list[Target],
) -> Iterator[tuple[memoryview | None, Target]]:
    """(payload, output) of each chunk a request carries: views into its bytes, no copies."""
    key, start, stop, members = request
    if data is None and stop >= 0:  # a shard index lists these chunks: never fill them
        raise ChunkReadError(f"{key}: listed in its shard index but not there to read")
    if data is not None and stop >= 0 and len(data) != stop - start:
        raise ChunkReadError(f"{key}: {len(data)} bytes arrived of {stop - start} asked for")
    for i in members:
        _, chunk_start, chunk_stop = located[i]  # type: ignore[misc]
        if data is None:  # an unsharded chunk never written: fill
            yield None, outputs[i]
        elif chunk_stop < 0:
            yield data, outputs[i]
        else:
            yield data[chunk_start - start : chunk_stop - start], outputs[i]


class _Budget:
    """Bytes a read may hold fetched and not yet decoded; one request at a time may exceed
    it alone (a chunk larger than the budget is still read). One acquirer: requests are
    admitted in order."""

    def __init__(self, limit: int):
        import asyncio

        self.limit, self.used = limit, 0
        self._changed = asyncio.Condition()

    async def acquire(self, nbytes: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: not self.used or self.used + nbytes <= self.limit)
            self.used += nbytes

    async def release(self, nbytes: int) -> None:
        async with self._changed:
            self.used -= nbytes
            self._changed.notify_all()
