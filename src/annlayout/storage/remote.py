"""Object storage: ``s3://`` (and ``gs://``, ``az://``) URLs through obstore or fsspec.

Two clients reach object storage: obstore (Rust's object_store: concurrent ranged reads,
multipart uploads and retries with backoff built in) and fsspec (s3fs on botocore). Which one
opens a URL is chosen per run (``RunOptions.store_backend``, ``--store-backend``) and held in a
context variable (:func:`store_backend`), so two threads never see each other's choice and
nothing writes the environment; tasks carry the choice to their threads and to a cluster's
workers explicitly. ``$ANNLAYOUT_STORE_BACKEND`` is read as the default where nothing was
chosen; obstore is the default where it is installed (measured faster, see
docs/cookbook/object-storage.md).

Credentials, region and endpoint come from where each client looks: the ``AWS_*`` (or
``GOOGLE_*``, ``AZURE_*``) environment variables. Both clients retry throttling (429, 503),
server errors and dropped connections with exponential backoff before an error reaches
annlayout, and neither turns a failed request into a missing object.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from annlayout.base.errors import NotAnnDataError
from annlayout.base.options import BACKENDS, Backend

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

BACKEND_ENV = "ANNLAYOUT_STORE_BACKEND"

# Retry budget for both clients: about a minute of backoff (0.1 s doubling to 15 s) before a
# throttled or failing request is given up; object stores throttle in bursts of seconds.
# ``$ANNLAYOUT_MAX_RETRIES`` changes it (fewer to fail fast, more for a congested link).
MAX_RETRIES = 10
RETRY_TIMEOUT = timedelta(minutes=3)
RETRIES_ENV = "ANNLAYOUT_MAX_RETRIES"


def max_retries() -> int:
    text = os.environ.get(RETRIES_ENV, "").strip()
    if not text:
        return MAX_RETRIES
    if not text.isdigit():
        raise ValueError(f"{RETRIES_ENV}={text!r}: expected a whole number of retries")
    return int(text)


def is_url(location: object) -> bool:
    """``s3://bucket/data.zarr`` and other object-store URLs, as opposed to local paths."""
    return "://" in str(location)


#: The client chosen for this thread (and the tasks it hands the choice to), if any.
_chosen: ContextVar[Backend | None] = ContextVar("annlayout_store_backend", default=None)


def chosen_backend(name: str | None = None) -> Backend:
    """The client for URLs: ``name``, else the one :func:`store_backend` set in this thread,
    else ``$ANNLAYOUT_STORE_BACKEND``, else obstore when it is installed, else fsspec."""
    chosen = name or _chosen.get() or os.environ.get(BACKEND_ENV) or ""
    if not chosen:
        from annlayout.base.optional import missing

        return "fsspec" if missing("s3", ("obstore",)) else "obstore"
    if chosen not in BACKENDS:
        raise ValueError(f"store backend {chosen!r}: use one of {', '.join(BACKENDS)}")
    return cast(Backend, chosen)


@contextmanager
def store_backend(name: str | None) -> Iterator[None]:
    """Open URLs with ``name`` (obstore or fsspec) within the block; None changes nothing.

    ``with annlayout.store_backend("fsspec"): annlayout.apply(...)``. The choice belongs to
    the calling thread (a context variable): another thread's is its own, and the tasks a run
    starts are handed it (``RunOptions.store_backend`` says the same for one run).
    """
    if name is None:
        yield
        return
    token = _chosen.set(chosen_backend(name))
    try:
        yield
    finally:
        _chosen.reset(token)


def codec_pipeline_for(pipeline: str | None, *locations: object) -> str | None:
    """The zarr codec pipeline for ``locations``: zarrs 0.2.3 rebuilds an obstore store in a
    runtime of its own (with a warning on every array it opens), where partial chunk writes
    hung on HEAD requests until the retry budget ran out (180 s, then an error);
    zarr-python's pipeline does not."""
    if pipeline == "zarrs" and any(map(is_url, locations)) and chosen_backend() == "obstore":
        return "zarr"
    return pipeline


def _require(which: Backend, url: str) -> None:
    from annlayout.base.optional import requirement

    modules = ("obstore",) if which == "obstore" else ("fsspec", "s3fs")
    needed = requirement("s3", f"{url}: reading and writing URLs", modules)
    if needed:
        raise NotAnnDataError(needed)


def _endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or ""


def remote_zarr_store(url: str, *, read_only: bool) -> Any:
    """A zarr Store for ``url`` through the chosen client."""
    which = chosen_backend()
    _require(which, url)
    if which == "obstore":
        from zarr.storage import ObjectStore

        return ObjectStore(_obstore(url, _endpoint(), max_retries()), read_only=read_only)
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(url, read_only=read_only, storage_options=_fsspec_options())


@cache
def _obstore(url: str, endpoint: str, retries: int) -> Any:
    """One obstore client per store, endpoint and retry budget: it keeps its connections
    between opens."""
    from obstore.store import from_url

    retry: RetryConfig = {  # typed dicts, types only
        "max_retries": retries,
        "retry_timeout": RETRY_TIMEOUT,
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=15),
            "base": 2,
        },
    }
    # an http:// endpoint (MinIO, a local S3 server) was asked for explicitly: allow it
    client: ClientConfig = {"allow_http": True} if endpoint.startswith("http://") else {}
    return from_url(url.rstrip("/"), client_options=client, retry_config=retry)  # type: ignore[call-overload]


def _fsspec_options() -> dict[str, Any]:
    """botocore's standard mode retries 5xx, 429 and connection errors, with backoff; s3fs
    retries cut reads and slow-downs on top (5 times, its class default)."""
    attempts = max_retries() + 1
    return {"config_kwargs": {"retries": {"max_attempts": attempts, "mode": "standard"}}}


def filesystem(url: str) -> Any:
    """The fsspec filesystem of a URL, configured as :func:`remote_zarr_store` configures it."""
    _require("fsspec", url)
    import fsspec

    fs, _ = fsspec.core.url_to_fs(url, **_fsspec_options())
    return fs


# -- what a store holds, for both clients -----------------------------------------------------


def _split(url: str) -> tuple[Any, str]:
    """(obstore client of the bucket, key prefix) of a URL."""
    scheme, _, rest = url.partition("://")
    bucket, _, key = rest.strip("/").partition("/")
    return _obstore(f"{scheme}://{bucket}", _endpoint(), max_retries()), key


def listing(url: str) -> dict[str, int]:
    """key -> size of every object under ``url`` (keys relative to it)."""
    url = url.rstrip("/")
    if chosen_backend() == "obstore":
        import obstore

        _require("obstore", url)
        client, key = _split(url)
        prefix = f"{key}/" if key else ""
        found: dict[str, int] = {}
        for batch in obstore.list(client, prefix=prefix or None):
            for meta in batch:
                found[meta["path"][len(prefix) :]] = int(meta["size"])
        return found
    fs = filesystem(url)
    root = fs._strip_protocol(url).rstrip("/") + "/"
    details: dict[str, dict[str, Any]] = fs.find(url, detail=True)
    return {path[len(root) :]: int(info.get("size", 0)) for path, info in details.items()}


def exists(url: str) -> bool:
    """Whether any object lives under ``url``."""
    return bool(listing(url))


def zarr_exists(url: str) -> bool:
    """Whether ``url`` holds a zarr group or array (its root metadata)."""
    url = url.rstrip("/")
    if chosen_backend() == "obstore":
        import obstore

        _require("obstore", url)
        client, key = _split(url)
        for name in ("zarr.json", ".zgroup", ".zarray"):
            try:
                obstore.head(client, f"{key}/{name}" if key else name)
                return True
            except FileNotFoundError:
                continue
        return False
    fs = filesystem(url)
    return any(fs.exists(f"{url}/{name}") for name in ("zarr.json", ".zgroup", ".zarray"))


ROOT_METADATA = ("zarr.json", ".zgroup", ".zattrs", ".zmetadata")


def remove(url: str) -> None:
    """Delete every object under ``url`` (object stores have no directories to remove).

    The root metadata goes first: a removal cut short leaves no root, which every reader
    refuses, rather than a root whose elements are half gone."""
    url = url.rstrip("/")
    names = sorted(listing(url), key=lambda name: name not in ROOT_METADATA)
    if chosen_backend() == "obstore":
        delete_objects(url, names)  # in that order: the roots in the first batch
        return
    fs = filesystem(url)
    roots = [f"{url}/{name}" for name in names if name in ROOT_METADATA]
    if roots:
        fs.rm(roots)
    if len(names) > len(roots):
        fs.rm(url, recursive=True)


# -- uploading a store built locally -----------------------------------------------------------

UPLOAD_CONCURRENCY = 16  # objects in flight: enough to hide a 20-100 ms round trip
# uploaded after everything else, in this order: a store whose upload was cut short has no
# root (zarr.json/.zgroup), so no reader takes it for a whole store
ROOT_LAST = (".zmetadata", ".zattrs", "zarr.json", ".zgroup")


def upload(
    local: Path,
    url: str,
    *,
    between: Callable[[], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    objects_sent: bool = False,
) -> dict[str, int]:
    """Upload the store in directory ``local`` to ``url``, its root metadata last.

    Objects go up concurrently (large ones in parts, each part retried alone); ``between``
    is called between batches (to stop on Ctrl-C); ``objects_sent``: :func:`upload_objects`
    sent all but the root already. The listing of ``url`` afterwards must match the local
    files name for name and size for size. Returns that listing.
    """
    url = url.rstrip("/")
    if not objects_sent:
        upload_objects(local, url, between=between, progress=progress)
    files = _store_files(local)
    roots = [name for name in ROOT_LAST if name in files]
    for k, name in enumerate(roots):  # one by one, in order
        _send(url, files, [name], between, progress, done=len(files) - len(roots) + k)
    found = listing(url)
    wrong = [n for n, p in files.items() if found.get(n) != p.stat().st_size]
    if wrong:
        raise OSError(f"{url}/{wrong[0]}: the upload did not arrive whole ({len(wrong)} objects)")
    return found


def upload_objects(
    local: Path,
    url: str,
    *,
    between: Callable[[], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> None:
    """Upload every object of the store in ``local`` but its root metadata, which no reader
    takes for a store: what may go up before the store is known good."""
    files = _store_files(local)
    names = [name for name in files if name not in ROOT_LAST]
    _send(url.rstrip("/"), files, names, between, progress, done=0)


def _store_files(local: Path) -> dict[str, Path]:
    return {p.relative_to(local).as_posix(): p for p in sorted(local.rglob("*")) if p.is_file()}


def _send(
    url: str,
    files: dict[str, Path],
    names: list[str],
    between: Callable[[], None] | None,
    progress: Callable[[str, int, int], None] | None,
    done: int,
) -> None:
    """``names`` in batches of a few times the objects in flight, ``between`` before each."""
    batch = UPLOAD_CONCURRENCY * 4
    for start in range(0, len(names), batch):
        if between:
            between()
        chunk = names[start : start + batch]
        _put_files(url, [(name, files[name]) for name in chunk])
        if progress:
            progress("upload", done + start + len(chunk), len(files))


def _put_files(url: str, items: list[tuple[str, Path]]) -> None:
    if chosen_backend() == "obstore":
        import obstore

        _require("obstore", url)
        client, key = _split(url)

        def put(item: tuple[str, Path]) -> None:
            name, path = item
            obstore.put(client, f"{key}/{name}" if key else name, path)

        with ThreadPoolExecutor(UPLOAD_CONCURRENCY) as pool:
            list(pool.map(put, items))  # re-raises the first failure
        return
    fs = filesystem(url)
    fs.put([str(p) for _, p in items], [f"{url}/{name}" for name, _ in items])


# -- objects within a bucket, copied on the server -------------------------------------------


def copy_objects(source: str, target: str, names: list[str]) -> None:
    """Copy the objects ``names`` from under ``source`` to under ``target`` on the server
    (S3 CopyObject: the bytes never come down), concurrently."""
    if not names:
        return
    source, target = source.rstrip("/"), target.rstrip("/")
    if chosen_backend() == "obstore":
        import obstore

        _require("obstore", source)
        (client, source_key), (_, target_key) = _split(source), _split(target)
        if _bucket(source) != _bucket(target):
            raise ValueError(f"{source} -> {target}: copies stay within one bucket")

        def copy(name: str) -> None:
            obstore.copy(client, _join(source_key, name), _join(target_key, name))

        with ThreadPoolExecutor(UPLOAD_CONCURRENCY) as pool:
            list(pool.map(copy, names))
        return
    fs = filesystem(source)
    fs.copy([f"{source}/{name}" for name in names], [f"{target}/{name}" for name in names])


def delete_objects(url: str, names: list[str]) -> None:
    """Delete the objects ``names`` under ``url`` (absent ones are no error)."""
    url = url.rstrip("/")
    if not names:
        return
    if chosen_backend() == "obstore":
        import obstore

        client, key = _split(url)
        keys = [_join(key, name) for name in names]
        for start in range(0, len(keys), 1000):  # S3's batch delete takes 1,000 keys
            obstore.delete(client, keys[start : start + 1000])
        return
    fs = filesystem(url)
    fs.invalidate_cache(url)  # s3fs answers from its listing cache, which others outdate
    fs.rm([f"{url}/{name}" for name in names])  # S3's batch delete: absent keys are no error


def read_object(url: str) -> bytes:
    """The bytes of one object; FileNotFoundError when there is none."""
    if chosen_backend() == "obstore":
        import obstore

        _require("obstore", url)
        client, key = _split(url)
        return bytes(obstore.get(client, key).bytes())
    fs = filesystem(url)
    fs.invalidate_cache(url)
    return bytes(fs.cat_file(url))


def write_object(url: str, data: bytes) -> None:
    if chosen_backend() == "obstore":
        import obstore

        _require("obstore", url)
        client, key = _split(url)
        obstore.put(client, key, data)
        return
    filesystem(url).pipe_file(url, data)


def _bucket(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.strip('/').partition('/')[0]}"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


# -- one object read by byte range (an h5ad file in a bucket) ---------------------------------

#: A read of the file-like object fetches whole blocks of this size, kept in a small cache:
#: HDF5 reads its metadata (object headers, B-trees, heaps) tens to hundreds of bytes at a
#: time, one after another, and each would otherwise be a GET and a round trip. Measured
#: (inspect; open + obs + 256 rows): pbmc68k_reduced (1.8 MB) 33 and 82 GETs with 16 KiB
#: blocks, 16 and 24 with 64 KiB, 7 and 7 with 256 KiB, 2 and 2 with 1 MiB; a 100 MB file
#: (metadata spread between its arrays) 61, 53, 49 and 44 GETs for inspect, bringing down
#: 1.2, 3.6, 13 and 45 MB: 256 KiB keeps the round trips of small files few without
#: bringing down much of a large one.
BLOCK_SIZE = 256 * 1024
CACHE_BLOCKS = 32  # 8 MiB: HDF5 keeps its own metadata cache above this one
PART_SIZE = 8 * 2**20  # a large read is split into ranged GETs of this size, in flight together
READ_CONCURRENCY = 16  # ranged GETs in flight (as many as an upload keeps)


class RemoteObject(io.RawIOBase):
    """One object of a bucket as a read-only, seekable file that reads by byte range.

    What h5py opens an h5ad on object storage with (``h5py.File(RemoteObject(url), "r")``):
    small reads come from a least-recently-used cache of ``BLOCK_SIZE`` blocks (missing
    neighbouring blocks fetched in one GET), large ones straight from the bucket in parts
    fetched concurrently. :meth:`read_ranges` fetches many ranges at once for
    :mod:`annlayout.storage.h5`. The object's size is read once (a HEAD) when it is made;
    ``FileNotFoundError`` when there is no such object. ``repr`` is the URL: h5py names the
    file by it.
    """

    def __init__(self, url: str, *, block_size: int = BLOCK_SIZE, cache_blocks: int = CACHE_BLOCKS):
        super().__init__()
        self.url, self.block_size, self.cache_blocks = url, block_size, cache_blocks
        self.backend = chosen_backend()
        _require(self.backend, url)
        self.size, self.etag = object_info(url)
        self.requests = 0  # ranged GETs made, for tests and reports
        self.concurrency = READ_CONCURRENCY
        self._position = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._fs: Any = None

    def __repr__(self) -> str:
        return self.url

    # -- io.RawIOBase ----------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"{self.url}: seek to {base + offset}, before the start")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        with _collection_paused():  # h5py calls this holding its lock: see there
            return self._readinto(buffer)

    def _readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        start = self._position
        stop = min(self.size, start + len(view))
        if stop <= start:
            return 0
        if stop - start >= 4 * self.block_size:  # bulk: not worth caching, fetched in parts
            parts = [(a, min(stop, a + PART_SIZE)) for a in range(start, stop, PART_SIZE)]
            for (a, b), part in zip(parts, self.read_ranges(parts), strict=True):
                view[a - start : b - start] = part
        else:
            first, last = start // self.block_size, (stop - 1) // self.block_size
            blocks = self._cached_blocks(first, last)
            for block in range(first, last + 1):
                data, at = blocks[block], block * self.block_size
                lo, hi = max(start, at), min(stop, at + len(data))
                view[lo - start : hi - start] = data[lo - at : hi - at]
        self._position = stop
        return stop - start

    def _cached_blocks(self, first: int, last: int) -> dict[int, bytes]:
        with self._lock:
            found = {b: self._blocks[b] for b in range(first, last + 1) if b in self._blocks}
            for block in found:
                self._blocks.move_to_end(block)
        missing = [b for b in range(first, last + 1) if b not in found]
        runs: list[list[int]] = []  # consecutive missing blocks: one GET each run
        for block in missing:
            if runs and runs[-1][-1] == block - 1:
                runs[-1].append(block)
            else:
                runs.append([block])
        ranges = [
            (run[0] * self.block_size, min(self.size, (run[-1] + 1) * self.block_size))
            for run in runs
        ]
        for run, (a, _), data in zip(runs, ranges, self.read_ranges(ranges), strict=True):
            for block in run:
                offset = block * self.block_size - a
                found[block] = bytes(data[offset : offset + self.block_size])
        with self._lock:
            for block in missing:
                self._blocks[block] = found[block]
            while len(self._blocks) > self.cache_blocks:
                self._blocks.popitem(last=False)
        return found

    # -- many ranges at once ---------------------------------------------------------------

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[memoryview]:
        """The bytes of ``[start, stop)`` ranges of the object, fetched concurrently (each
        one ranged GET; both clients retry transient failures); an error if the object is
        shorter than a range asks for."""
        return [data for _, data in sorted(self.fetch_ranges(ranges), key=lambda item: item[0])]

    def fetch_ranges(self, ranges: Sequence[tuple[int, int]]) -> Iterator[tuple[int, memoryview]]:
        """(position in ``ranges``, bytes) of each range as it arrives, at most
        ``READ_CONCURRENCY`` in flight."""
        if len(ranges) == 1:
            yield 0, self._get(*ranges[0])
            return
        futures = {_get_pool().submit(self._get, a, b): i for i, (a, b) in enumerate(ranges)}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:  # a failure (or a caller that stops early): the rest are not sent
            for future in futures:
                future.cancel()

    def _get(self, start: int, stop: int) -> memoryview:
        if start < 0 or stop > self.size or start >= stop:
            raise ValueError(f"{self.url}: bytes {start}-{stop} are outside its {self.size:,}")
        self.requests += 1
        if self.backend == "obstore":
            import obstore

            client, key = _split(self.url)
            data = memoryview(obstore.get_range(client, key, start=start, end=stop))
        else:
            if self._fs is None:
                self._fs = filesystem(self.url)
            data = memoryview(self._fs.cat_file(self.url, start=start, end=stop))
        if len(data) != stop - start:  # the object was cut short (or replaced) since its HEAD
            raise OSError(
                f"{self.url}: {len(data):,} bytes arrived of {stop - start:,} asked for at byte "
                f"{start:,} (the object is shorter than its size, {self.size:,}: replaced?)"
            )
        return data


_paused = threading.Lock()
_paused_by = [0, False]  # readers inside, and whether collection was on before the first


@contextmanager
def _collection_paused() -> Iterator[None]:
    """No garbage collection while h5py waits for a read. h5py holds its global lock while
    it calls ``readinto``, and the read is served by other threads (the GET pool, fsspec's
    IO loop) that run Python: a collection in one of them may free h5py objects, whose
    finalizers wait for that lock, so neither side moves (seen under pytest-xdist, fsspec).
    Reference counting still frees what it can; the collection runs once reads are done."""
    import gc

    with _paused:
        if _paused_by[0] == 0:
            _paused_by[1] = gc.isenabled()
            gc.disable()
        _paused_by[0] += 1
    try:
        yield
    finally:
        with _paused:
            _paused_by[0] -= 1
            if _paused_by[0] == 0 and _paused_by[1]:
                gc.enable()


@cache
def _get_pool() -> ThreadPoolExecutor:
    """The threads that send :class:`RemoteObject`'s ranged GETs, one pool per process."""
    return ThreadPoolExecutor(READ_CONCURRENCY, thread_name_prefix="annlayout-get")


if hasattr(os, "register_at_fork"):  # a forked child has the pool but not its threads
    os.register_at_fork(after_in_child=_get_pool.cache_clear)


def object_info(url: str) -> tuple[int, str | None]:
    """(size, ETag) of the one object at ``url``; FileNotFoundError when there is none (a
    prefix with objects under it is not an object)."""
    if chosen_backend() == "obstore":
        import obstore

        _require("obstore", url)
        client, key = _split(url)
        if not key:
            raise FileNotFoundError(url)
        meta = obstore.head(client, key)
        return int(meta["size"]), meta.get("e_tag")
    fs = filesystem(url)
    fs.invalidate_cache(url)
    info = fs.info(url)
    if info.get("type") != "file":
        raise FileNotFoundError(url)
    return int(info["size"]), info.get("ETag")
