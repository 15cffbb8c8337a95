"""zarr's codec pipeline, set in one place under one lock.

zarr picks an array's codec pipeline from its process-wide config (``codec_pipeline.path``)
when the array object is made, and ``zarr.config.set`` is not safe from threads (each set
restores what it found, whoever changed it since). So every change goes through this module,
under :data:`_lock`, in two forms:

- :func:`codec_pipeline`: a run's pipeline (apply, concat, append, write), held for the run by
  its driver; the arrays anndata makes inside are made with it. Runs that ask for the same
  pipeline share it (a count, no waiting); a run asking for another while one holds it is
  refused (:class:`~annlayout.base.errors.CodecPipelineConflict`) rather than made to wait: a
  wait from the holding thread itself (a nested run) would never end, and a silent wait would
  serialise runs the caller meant to be concurrent.
- :func:`opening`: the pipeline for the arrays opened within, under the lock for that moment
  only (a task opening its arrays on a dask thread, the reader opening an input's arrays):
  set, used, and set back while no other thread can change it. The lock is never held for a
  run, so task threads are not blocked by the driver that waits for them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from annlayout.base.errors import CodecPipelineConflict

#: zarr's names for the codec pipelines annlayout chooses between.
CODEC_PIPELINES = {
    "zarrs": "zarrs.ZarrsCodecPipeline",
    "zarr": "zarr.core.codec_pipeline.BatchedCodecPipeline",
}

_lock = threading.RLock()
# the pipeline runs hold, how many runs hold it, and the config it replaced
_held: str | None = None
_holders = 0
_saved: str | None = None


def _path(name: str) -> str:
    if name not in CODEC_PIPELINES:
        raise ValueError(
            f"codec pipeline must be one of {', '.join(CODEC_PIPELINES)}, not {name!r}"
        )
    if name == "zarrs":
        import zarrs  # noqa: F401  (registers the pipeline)
    return CODEC_PIPELINES[name]


def _current() -> str:
    import zarr

    return str(zarr.config.get("codec_pipeline.path"))


def _configure(path: str) -> None:
    import zarr

    zarr.config.set({"codec_pipeline.path": path})  # set now; the returned context is unused


@contextmanager
def codec_pipeline(name: str | None) -> Iterator[None]:
    """Use the zarrs (Rust) codec pipeline, or zarr-python's own, for a run; None changes
    nothing. Shared by runs that ask for the same one; another while it is held is refused."""
    global _held, _holders, _saved
    if name is None:
        yield
        return
    path = _path(name)
    with _lock:
        if _holders and _held != name:
            raise CodecPipelineConflict(
                f"codec pipeline {name!r}: another run in this process is using {_held!r} "
                "(zarr has one setting per process); run them one after the other, or with "
                "the same --codec-pipeline"
            )
        if not _holders:
            _saved, _held = _current(), name
            _configure(path)
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if not _holders:
                _configure(_saved or CODEC_PIPELINES["zarr"])
                _held = _saved = None


@contextmanager
def opening(name: str | None) -> Iterator[None]:
    """The arrays and groups opened within use ``name``'s pipeline (None: the one set now).
    Holds the lock for the block: keep it to the opening."""
    with _lock:
        if name is None or _current() == _path(name):
            yield
            return
        saved = _current()
        _configure(_path(name))
        try:
            yield
        finally:
            _configure(saved)


__all__ = ["CODEC_PIPELINES", "codec_pipeline", "opening"]
