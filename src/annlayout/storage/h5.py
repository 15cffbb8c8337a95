"""Runs of positions of a 1-D h5py dataset, read by their byte offsets: a local file, or an
h5ad object on object storage.

h5py reads a slice of a chunked dataset chunk by chunk through HDF5's chunk cache and type
conversion, at a few hundred MB/s; an h5ad's ``X/data`` and ``X/indices`` are such datasets
(anndata writes them resizable, so chunked), and reading them was a large part of every
apply, concat and append from h5ad. HDF5 says where each chunk lies in the file
(``chunk_iter``, one call for the whole table), so this module reads those bytes itself:
``os.preadv`` straight into the output block, neighbouring chunks that are also neighbours
in the file as one call; deflate-compressed chunks (h5py's ``compression="gzip"``, what
scanpy writes with ``compression="gzip"``) are inflated on the read threads, where zlib
releases the GIL.

An h5ad on object storage is opened by h5py over a file-like object that reads by byte
range (:class:`annlayout.storage.remote.RemoteObject`, registered here with :func:`register_source`);
through h5py the chunks would be fetched one after another, a round trip each unless its
block is cached. Here the chunks a read touches become ranged GETs, merged as :func:`annlayout.storage.chunks.merged_requests` merges a zarr shard's chunks (while
the gap costs less than a round trip, at most twice the bytes asked for), many in flight.

:func:`h5_reader` returns ``None`` for datasets it does not read itself (other filters,
compound or string dtypes, files open for writing, on neither the local disk nor a
registered object, external or virtual storage); callers read those through h5py as before.
"""

from __future__ import annotations

import os
import time
import weakref
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from annlayout.base.errors import ChunkReadError
from annlayout.storage.chunks import (
    FETCH_BUDGET,
    MIN_GAP,
    Link,
    Request,
    merged_requests,
    read_pool,
)

DEFLATE = 1  # H5Z_FILTER_DEFLATE


class RangeSource(Protocol):
    """An object on object storage, read by byte range (:class:`annlayout.storage.remote.RemoteObject`)."""

    url: str
    size: int
    etag: str | None
    concurrency: int

    def fetch_ranges(
        self, ranges: Sequence[tuple[int, int]]
    ) -> Iterator[tuple[int, memoryview]]: ...


# the object each h5py file opened over one was opened on, by (name, HDF5's file number)
_sources: weakref.WeakValueDictionary[tuple[str, Any], Any] = weakref.WeakValueDictionary()


def register_source(file: Any, source: RangeSource) -> None:
    """Read the datasets of ``file`` (an h5py File opened over ``source``) from ``source``."""
    _sources[(file.filename, file.id.fileno)] = source


def source_of(file: Any) -> RangeSource | None:
    """The object an h5py file was opened over (see :func:`register_source`), or None."""
    try:
        return _sources.get((file.filename, file.id.fileno))
    except (AttributeError, ValueError):  # closed, or not an h5py file
        return None


class H5Reader:
    """Reads runs of positions of one 1-D dataset from its file's bytes.

    ``extents``: per chunk of ``chunk_len`` positions, its (file offset, stored size, filter
    mask); a chunk never written has offset -1 and reads as the fill value. A contiguous
    dataset is one chunk as long as the dataset.
    """

    def __init__(
        self,
        filename: str,
        *,
        length: int,
        chunk_len: int,
        dtype: np.dtype,
        fill_value: Any,
        extents: np.ndarray,
        deflated: bool,
        source: RangeSource | None = None,
    ):
        self.filename, self.length, self.chunk_len = filename, length, chunk_len
        self.dtype, self.extents, self.deflated = dtype, extents, deflated
        self.fill_value = np.asarray(fill_value or 0).astype(dtype)
        self.source = source
        # reads are local unless from an object (see reader._Arrays._remote)
        self.local_root = Path(filename) if source is None else None
        self.link = Link(source.concurrency if source is not None else 1)

    def load_indexes(self) -> None:
        """The chunk table is read when the reader is made; nothing more to load."""

    def read(self, runs: Sequence[tuple[int, int]], dtype: Any = None) -> np.ndarray:
        """The positions of ``[start, stop)`` runs (sorted, disjoint), concatenated, as
        ``dtype`` (default the dataset's, in native byte order)."""
        dtype = np.dtype(dtype or self.dtype.newbyteorder("="))
        total = sum(stop - start for start, stop in runs)
        if any(start < 0 or stop > self.length for start, stop in runs):
            raise IndexError(f"positions beyond {self.filename} dataset of length {self.length}")
        out = np.empty(total, self.dtype)
        pieces = self._pieces(runs)
        if self.source is not None:
            self._fetch_into(self.source, pieces, out)
            return out if out.dtype == dtype else out.astype(dtype)
        fd = os.open(self.filename, os.O_RDONLY)
        try:
            if self.deflated:
                self._inflate_into(fd, pieces, out)
            else:
                self._pread_into(fd, pieces, out)
        finally:
            os.close(fd)
        return out if out.dtype == dtype else out.astype(dtype)

    def _pieces(self, runs: Sequence[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
        """(chunk, first position in it, positions, position in the output) of every part
        of a chunk the runs cover, in order."""
        pieces = []
        at = 0
        for start, stop in runs:
            position = start
            while position < stop:
                chunk = position // self.chunk_len
                within = position - chunk * self.chunk_len
                count = min(stop, (chunk + 1) * self.chunk_len) - position
                pieces.append((chunk, within, count, at))
                position += count
                at += count
        return pieces

    def _pread_into(
        self, fd: int, pieces: list[tuple[int, int, int, int]], out: np.ndarray
    ) -> None:
        """Uncompressed chunks: their bytes are the values; a piece of the file next to the
        last one (and next to it in ``out``) extends the same read."""
        view = memoryview(out.view(np.uint8).data)
        size = self.dtype.itemsize
        pending: list[int] | None = None  # [file offset, output byte, bytes]
        for chunk, within, count, at in pieces:
            offset = int(self.extents[chunk, 0])
            if offset < 0:
                out[at : at + count] = self.fill_value
                continue
            start, nbytes = offset + within * size, count * size
            if (
                pending
                and pending[0] + pending[2] == start
                and pending[1] + pending[2] == at * size
            ):
                pending[2] += nbytes
                continue
            if pending:
                _pread_exactly(fd, view, pending[0], pending[1], pending[2], self.filename)
            pending = [start, at * size, nbytes]
        if pending:
            _pread_exactly(fd, view, pending[0], pending[1], pending[2], self.filename)

    def _inflate_into(
        self, fd: int, pieces: list[tuple[int, int, int, int]], out: np.ndarray
    ) -> None:
        """Deflated chunks: each read whole and inflated once, on the read threads, however
        many runs it holds (scattered rows often share a chunk)."""
        parts: dict[int, list[tuple[int, int, int]]] = {}
        for chunk, within, count, at in pieces:
            parts.setdefault(chunk, []).append((within, count, at))

        def one(chunk: int) -> None:
            offset, stored, mask = (int(v) for v in self.extents[chunk])
            if offset < 0:
                for _, count, at in parts[chunk]:
                    out[at : at + count] = self.fill_value
                return
            raw = os.pread(fd, stored, offset)
            if len(raw) != stored:
                raise OSError(f"{self.filename}: chunk at byte {offset} is cut short")
            self._inflate(raw, mask, parts[chunk], out)

        for _ in read_pool().map(one, parts):
            pass

    def _fetch_into(
        self, source: RangeSource, pieces: list[tuple[int, int, int, int]], out: np.ndarray
    ) -> None:
        """From object storage, as merged ranged GETs, many in flight and at most
        ``FETCH_BUDGET`` bytes held at a time: deflated chunks whole (inflated on the read
        threads as they arrive), uncompressed ones whole when small (like a zarr chunk: no
        larger than the least gap worth a request, so neighbours merge), else only the
        pieces the runs cover."""
        size = self.dtype.itemsize
        parts: dict[int, list[tuple[int, int, int]]] = {}
        for chunk, within, count, at in pieces:
            parts.setdefault(chunk, []).append((within, count, at))
        located: list[tuple[str, int, int] | None] = []
        # per located range: the chunk's filter mask (None: not deflated) and its pieces
        # (position in the range's values, count, position in out)
        places: list[tuple[int | None, list[tuple[int, int, int]]]] = []
        for chunk, its in parts.items():
            offset, stored, mask = (int(v) for v in self.extents[chunk])
            if offset < 0:
                for _, count, at in its:
                    out[at : at + count] = self.fill_value
            elif self.deflated or stored <= MIN_GAP:
                located.append((source.url, offset, offset + stored))
                places.append((mask if self.deflated else None, its))
            else:
                for within, count, at in its:
                    begin = offset + within * size
                    located.append((source.url, begin, begin + count * size))
                    places.append((None, [(0, count, at)]))
        requests = merged_requests(located, self.link.gap, self.link.request_span)
        for window in _windows(requests, FETCH_BUDGET):
            started, nbytes = time.perf_counter(), 0
            inflating: list[Future[None]] = []
            ranges = [(request.start, request.stop) for request in window]
            for i, data in source.fetch_ranges(ranges):
                request, nbytes = window[i], nbytes + len(data)
                for member in request.members:
                    _, start, stop = located[member]  # type: ignore[misc]
                    raw = data[start - request.start : stop - request.start]
                    filter_mask, its = places[member]
                    if filter_mask is None:
                        _place(raw, its, out)
                    else:
                        job = read_pool().submit(self._inflate, raw, filter_mask, its, out)
                        inflating.append(job)
            self.link.observe(len(window), nbytes, time.perf_counter() - started)
            for future in inflating:
                future.result()

    def _inflate(self, raw: Any, mask: int, its: list[tuple[int, int, int]], out: Any) -> None:
        if not mask & 1:  # bit 0 set: the deflate filter was skipped for this chunk
            try:
                raw = zlib.decompress(raw)
            except zlib.error as error:
                raise ChunkReadError(
                    f"{self.filename}: a chunk does not inflate: {error}"
                ) from None
        _place(raw, its, out)


def _place(raw: Any, its: list[tuple[int, int, int]], out: np.ndarray) -> None:
    """Values of a chunk's bytes to their places: (position in the chunk, count, in out)."""
    size = out.dtype.itemsize
    for within, count, at in its:
        out[at : at + count] = np.frombuffer(raw, out.dtype, count, within * size)


def _windows(requests: list[Request], budget: int) -> Iterator[list[Request]]:
    """Consecutive requests of at most ``budget`` bytes together (one alone may exceed it)."""
    window: list[Request] = []
    held = 0
    for request in requests:
        if window and held + request.size > budget:
            yield window
            window, held = [], 0
        window.append(request)
        held += request.size
    if window:
        yield window


def _pread_exactly(fd: int, view: memoryview, offset: int, at: int, nbytes: int, name: str) -> None:
    done = 0
    while done < nbytes:
        into = view[at + done : at + nbytes]
        if hasattr(os, "preadv"):  # straight into the output
            got = os.preadv(fd, [into], offset + done)
        else:  # macOS before 11: a copy
            piece = os.pread(fd, len(into), offset + done)
            into[: len(piece)] = piece
            got = len(piece)
        if got <= 0:
            raise OSError(f"{name}: {nbytes - done} bytes missing at byte {offset + done}")
        done += got


def read_slice(array: Any, start: int, stop: int) -> np.ndarray:
    """``array[start:stop]`` as numpy: a 1-D dataset of a local h5ad by its chunks' byte
    offsets, anything else (zarr, numpy, other h5py datasets) by slicing."""
    reader = cached_h5_reader(array) if start < stop else None
    if reader is not None:
        return reader.read([(start, min(stop, reader.length))])
    return np.asarray(array[start:stop])


def cached_h5_reader(dataset: Any) -> H5Reader | None:
    """:func:`h5_reader`, made once per dataset of a file as it is on disk (size and
    modification time): a copy reads one block at a time, and each would otherwise ask HDF5
    for the whole chunk table again."""
    if type(dataset).__module__.split(".")[0] != "h5py":
        return None
    try:
        file = dataset.file
        source = source_of(file)
        if source is not None:  # an object: its size and ETag say whether it changed
            key: tuple[Any, ...] = (source.url, dataset.name, source.size, source.etag)
        else:
            stat = os.stat(file.filename)
            key = (file.filename, dataset.name, stat.st_size, stat.st_mtime_ns)
    except (AttributeError, OSError, ValueError):  # not an h5py dataset of a local file
        return None
    if key not in _made:
        if len(_made) >= 64:
            _made.clear()
        _made[key] = h5_reader(dataset)
    return _made[key]


_made: dict[tuple[Any, ...], H5Reader | None] = {}


def h5_reader(dataset: Any) -> H5Reader | None:
    """An :class:`H5Reader` for a 1-D numeric h5py dataset of a local file, or of an object
    registered with :func:`register_source`, open for reading, stored contiguous or chunked,
    without filters or with deflate alone; else None."""
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        return None
    if not isinstance(dataset, h5py.Dataset) or dataset.ndim != 1 or dataset.is_virtual:
        return None
    file = dataset.file
    source = source_of(file) if file.driver == "fileobj" else None
    if file.mode != "r":
        return None
    if source is None and (
        not hasattr(os, "pread")  # Windows
        or file.driver != "sec2"
        or not os.path.isfile(file.filename)
    ):
        return None
    dtype = np.dtype(dataset.dtype)
    if dtype.kind not in "biuf" or dtype.fields is not None:
        return None
    plist = dataset.id.get_create_plist()
    if plist.get_external_count():
        return None
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if filters not in ([], [DEFLATE]):
        return None
    length = int(dataset.shape[0])
    fill = dataset.fillvalue
    if dataset.chunks is None:
        offset = dataset.id.get_offset()  # None: never written, all fill
        extents = np.array([[-1 if offset is None else offset, length * dtype.itemsize, 0]])
        return H5Reader(
            file.filename, length=length, chunk_len=max(1, length), dtype=dtype,
            fill_value=fill, extents=extents, deflated=False, source=source,
        )  # fmt: skip
    chunk_len = int(dataset.chunks[0])
    extents = np.full((max(1, -(-length // chunk_len)), 3), -1, dtype=np.int64)
    extents[:, 2] = 0

    def record(info: Any) -> None:
        chunk = info.chunk_offset[0] // chunk_len
        if chunk < len(extents):
            extents[chunk] = (info.byte_offset, info.size, info.filter_mask)

    if hasattr(dataset.id, "chunk_iter"):  # HDF5 >= 1.12.3: the whole table in one call
        dataset.id.chunk_iter(record)
    else:
        for index in range(dataset.id.get_num_chunks()):
            record(dataset.id.get_chunk_info(index))
    return H5Reader(
        file.filename, length=length, chunk_len=chunk_len, dtype=dtype, fill_value=fill,
        extents=extents, deflated=bool(filters), source=source,
    )  # fmt: skip
