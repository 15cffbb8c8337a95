"""Object storage: ``s3://`` (and ``gs://``, ``az://``) URLs through obstore or fsspec.

Two clients reach object storage: obstore (Rust's object_store: concurrent ranged reads,
multipart uploads and retries with backoff built in) and fsspec (s3fs on botocore). Which one
opens a URL is a process-wide choice, the ``ANNLAYOUT_STORE_BACKEND`` environment variable
(what ``--store-backend`` sets), so that worker processes inherit it; obstore is the default
where it is installed (measured faster, see docs/cookbook/object-storage.md).

Credentials, region and endpoint come from where each client looks: the ``AWS_*`` (or
``GOOGLE_*``, ``AZURE_*``) environment variables. Both clients retry throttling (429, 503),
server errors and dropped connections with exponential backoff before an error reaches
annlayout, and neither turns a failed request into a missing object.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from annlayout.errors import NotAnnDataError

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

Backend = Literal["obstore", "fsspec"]
BACKENDS: tuple[Backend, ...] = ("obstore", "fsspec")
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


def chosen_backend(name: str | None = None) -> Backend:
    """The client for URLs: ``name``, else ``$ANNLAYOUT_STORE_BACKEND``, else obstore when
    it is installed, else fsspec."""
    chosen = name or os.environ.get(BACKEND_ENV) or ""
    if not chosen:
        from annlayout.optional import missing

        return "fsspec" if missing("s3", ("obstore",)) else "obstore"
    if chosen not in BACKENDS:
        raise ValueError(f"store backend {chosen!r}: use one of {', '.join(BACKENDS)}")
    return cast(Backend, chosen)


@contextmanager
def store_backend(name: str | None) -> Iterator[None]:
    """Open URLs with ``name`` (obstore or fsspec) within the block; None changes nothing.

    ``with annlayout.store_backend("fsspec"): annlayout.apply(...)``; it sets
    ``$ANNLAYOUT_STORE_BACKEND``, so worker processes started within inherit the choice.
    """
    if name is None:
        yield
        return
    saved = os.environ.get(BACKEND_ENV)
    os.environ[BACKEND_ENV] = chosen_backend(name)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(BACKEND_ENV, None)
        else:
            os.environ[BACKEND_ENV] = saved


def codec_pipeline_for(pipeline: str | None, *locations: object) -> str | None:
    """The zarr codec pipeline for ``locations``: zarrs 0.2.3 rebuilds an obstore store in a
    runtime of its own (with a warning on every array it opens), where partial chunk writes
    hung on HEAD requests until the retry budget ran out (180 s, then an error);
    zarr-python's pipeline does not."""
    if pipeline == "zarrs" and any(map(is_url, locations)) and chosen_backend() == "obstore":
        return "zarr"
    return pipeline


def _require(which: Backend, url: str) -> None:
    from annlayout.optional import requirement

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
