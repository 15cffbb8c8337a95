"""Stores that count what a read costs, and simulate object storage the same way every time.

:class:`MeasuredStore` wraps any zarr store: it counts requests by kind (GET, PUT, LIST, HEAD,
as an object store bills them) and bytes read (measured, not estimated) and can add what object storage adds to every request: a round-trip latency, a
bandwidth limit, and a cap on requests in flight. ``sim:rtt=20ms,bandwidth=200MB/s,
concurrency=16`` gives remote costs that do not depend on the network of the day.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ByteSize, TypeAdapter
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore


@dataclass
class Counters:
    """Requests by kind and bytes read, shared by a store and the copies zarr makes of it.

    ``requests`` counts GETs (each ``get``, and each range of ``get_partial_values``);
    ``puts`` each ``set``; ``lists`` each ``list``, ``list_prefix`` or ``list_dir`` call;
    ``heads`` each ``exists`` or ``getsize``. ``bytes`` are the bytes the GETs returned.
    """

    requests: int = 0  # GETs
    bytes: int = 0  # bytes read (GET responses)
    puts: int = 0
    lists: int = 0
    heads: int = 0
    #: bytes read per folder of keys (e.g. ``X/csc/data/c``): what a pattern reads of which
    #: element, so a copy no pattern reads can be told from one that is read
    folders: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def gets(self) -> int:
        return self.requests

    def add(self, nbytes: int, key: str = "") -> None:
        """One GET (of ``key``) that returned ``nbytes``."""
        folder = key.rpartition("/")[0]
        with self._lock:
            self.requests += 1
            self.bytes += nbytes
            self.folders[folder] = self.folders.get(folder, 0) + nbytes

    def bytes_under(self, prefix: str) -> int:
        """Bytes read from keys under ``prefix`` (a folder ending in ``/``)."""
        return sum(n for folder, n in self.folders.items() if (folder + "/").startswith(prefix))

    def count(self, kind: str) -> None:
        """One request of ``kind``: ``"put"``, ``"list"`` or ``"head"``."""
        with self._lock:
            setattr(self, kind + "s", getattr(self, kind + "s") + 1)

    def by_kind(self) -> dict[str, int]:
        return {"GET": self.requests, "PUT": self.puts, "LIST": self.lists, "HEAD": self.heads}

    def reset(self) -> None:
        with self._lock:
            self.requests = self.bytes = self.puts = self.lists = self.heads = 0
            self.folders = {}


@dataclass(frozen=True)
class Simulation:
    """Where candidates are read from: local disk as it is (all defaults), local disk plus what
    object storage adds to each read (rtt, bandwidth, concurrency), or a real object store
    (``url``, e.g. ``s3://bucket/prefix``; endpoint and credentials from the environment)."""

    rtt: float = 0.0  # seconds per request
    bandwidth: float | None = None  # bytes per second, shared by requests in flight
    concurrency: int | None = None  # requests in flight at most
    url: str | None = None  # candidates are written under this prefix and read from there

    @property
    def active(self) -> bool:
        return bool(self.rtt or self.bandwidth or self.concurrency)

    def describe(self) -> str:
        if self.url:
            return self.url
        if not self.active:
            return "local"
        parts = [f"rtt={self.rtt * 1000:g}ms"]
        if self.bandwidth:
            parts.append(f"bandwidth={self.bandwidth / 1e6:g}MB/s")
        if self.concurrency:
            parts.append(f"concurrency={self.concurrency}")
        return "sim:" + ",".join(parts)


def parse_storage(text: str) -> Simulation:
    """``local``, ``sim:rtt=20ms,bandwidth=200MB/s,concurrency=16`` (any subset), or a URL
    such as ``s3://bucket/prefix``."""
    if text in ("", "local"):
        return Simulation()
    if "://" in text:
        if not text.split("://", 1)[1].strip("/"):
            raise ValueError(
                f"--storage {text!r}: give a bucket (and prefix), e.g. s3://bucket/bench"
            )
        return Simulation(url=text.rstrip("/"))
    if not text.startswith("sim:"):
        raise ValueError(
            f"--storage {text!r}: use local, sim:rtt=...,bandwidth=...,concurrency=... or an s3:// URL"
        )
    values: dict[str, Any] = {}
    for item in filter(None, text[4:].split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key == "rtt":
            match = re.fullmatch(r"\s*([\d.]+)\s*(ms|s|us)?\s*", value)
            if not match:
                raise ValueError(f"--storage rtt={value!r}: expected e.g. 20ms")
            scale = {"ms": 1e-3, "us": 1e-6, "s": 1.0, None: 1e-3}[match.group(2)]
            values["rtt"] = float(match.group(1)) * scale
        elif key == "bandwidth":
            amount = value.strip().removesuffix("/s")
            try:
                values["bandwidth"] = float(TypeAdapter(ByteSize).validate_python(amount))
            except Exception:
                raise ValueError(f"--storage bandwidth={value!r}: expected e.g. 200MB/s") from None
        elif key == "concurrency":
            if not value.strip().isdigit() or int(value) < 1:
                raise ValueError(f"--storage concurrency={value!r}: expected a positive integer")
            values["concurrency"] = int(value)
        else:
            raise ValueError(f"--storage: unknown setting {key!r} (rtt, bandwidth, concurrency)")
    return Simulation(**values)


class MeasuredStore(WrapperStore):
    """A zarr store that counts reads and, optionally, simulates object storage."""

    def __init__(
        self, store: Any, counters: Counters | None = None, simulation: Simulation | None = None
    ):
        super().__init__(store)
        self.counters = counters if counters is not None else Counters()
        self.simulation = simulation or Simulation()
        self._slots: dict[int, asyncio.Semaphore] = {}
        self._bandwidth_lock: dict[int, asyncio.Lock] = {}

    def _with_store(self, store: Any) -> MeasuredStore:
        return type(self)(store, self.counters, self.simulation)

    def __repr__(self) -> str:
        return f"MeasuredStore({self._store!r}, {self.simulation.describe()})"

    def _slot(self) -> asyncio.Semaphore | None:
        if not self.simulation.concurrency:
            return None
        loop = id(asyncio.get_running_loop())
        if loop not in self._slots:
            self._slots[loop] = asyncio.Semaphore(self.simulation.concurrency)
        return self._slots[loop]

    async def _transfer(self, nbytes: int) -> None:
        """Bytes share one link: transfers take their turn at ``bandwidth``."""
        if not self.simulation.bandwidth or not nbytes:
            return
        loop = id(asyncio.get_running_loop())
        lock = self._bandwidth_lock.setdefault(loop, asyncio.Lock())
        async with lock:
            await asyncio.sleep(nbytes / self.simulation.bandwidth)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        slot = self._slot()
        if slot is not None:
            await slot.acquire()
        try:
            if self.simulation.rtt:
                await asyncio.sleep(self.simulation.rtt)
            buffer = await self._store.get(key, prototype, byte_range)
            nbytes = len(buffer) if buffer is not None else 0
            await self._transfer(nbytes)
        finally:
            if slot is not None:
                slot.release()
        self.counters.add(nbytes, key)
        return buffer

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        # one request per range, as an object store serves them
        return list(await asyncio.gather(*(self.get(key, prototype, r) for key, r in key_ranges)))

    async def get_ranges(
        self,
        key: str,
        byte_ranges: Sequence[ByteRequest | None],
        *,
        prototype: BufferPrototype,
        **coalescing: Any,
    ) -> AsyncIterator[Sequence[tuple[int, Buffer | None]]]:
        """zarr >= 3.4 reads a shard's chunks here: a wrapper would hand the ranges to the
        wrapped store, uncounted; Store's own coalescing over :meth:`get` counts each fetch."""
        ranges = getattr(Store, "get_ranges")  # noqa: B009 (zarr < 3.4 has none, never calls it)
        async for group in ranges(self, key, byte_ranges, prototype=prototype, **coalescing):
            yield group

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        for key, prototype, byte_range in requests:  # a wrapper would pass them on, uncounted
            yield key, await self.get(key, prototype, byte_range)

    @property
    def _supports_sync_io(self) -> bool:
        # zarr >= 3.4 reads a store that can do sync IO through get_sync, past get: refuse it,
        # so every read is counted (and simulated)
        return False

    async def set(self, key: str, value: Buffer) -> None:
        self.counters.count("put")
        await self._store.set(key, value)

    async def exists(self, key: str) -> bool:
        self.counters.count("head")
        return bool(await self._store.exists(key))

    async def getsize(self, key: str) -> int:
        self.counters.count("head")
        return int(await self._store.getsize(key))

    def list(self) -> AsyncIterator[str]:
        self.counters.count("list")
        return self._store.list()

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        self.counters.count("list")
        return self._store.list_prefix(prefix)

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        self.counters.count("list")
        return self._store.list_dir(prefix)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self.counters.count("put")
        await self._store.set_if_not_exists(key, value)
