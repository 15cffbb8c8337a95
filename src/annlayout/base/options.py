"""The options every run shares (apply, concat, append, verify): one frozen object, checked
once when it is made, passed down whole instead of a dozen loose parameters.

The CLI makes one from its shared options (``cli.run_options``); the Python API takes one as
``options=`` and also accepts the same settings as keywords (``memory=``, ``workers=``, ...),
which :meth:`RunOptions.merged` turns into one. Nothing here reads the environment: the CLI
reads ``$ANNLAYOUT_STORE_BACKEND`` once, as the default of ``--store-backend``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

from annlayout.base.defaults import MEMORY
from annlayout.base.errors import ApplyError
from annlayout.base.sizes import parse_size

Progress = Callable[[str, int, int], None]  # (what, done, total)
CodecPipeline = Literal["zarrs", "zarr"]
CODEC_PIPELINE_NAMES: tuple[CodecPipeline, ...] = ("zarrs", "zarr")
Backend = Literal["obstore", "fsspec"]
BACKENDS: tuple[Backend, ...] = ("obstore", "fsspec")


@dataclass(frozen=True)
class RunOptions:
    """How a command runs, whatever it writes.

    ``memory``: the budget (a byte size such as ``"2GiB"``, or bytes; held as bytes), shared
    by ``workers`` local threads (dask) or used per worker of the dask.distributed cluster at
    ``scheduler``. ``verify``: compare the result with its inputs before it is put in place.
    ``resume``: continue a killed run from what it recorded. ``codec_pipeline``: zarr's codec
    pipeline for the zarr stores written (zarrs, Rust and parallel, or zarr-python's own;
    None: zarr's configured one). ``store_backend``: the client for ``s3://`` (``gs://``,
    ``az://``) URLs (obstore or fsspec; None: ``annlayout.store_backend``'s setting, else
    obstore where installed). ``progress``: called as ``progress(what, done, total)``.
    """

    memory: int | str = MEMORY
    workers: int = 1
    scheduler: str | None = None
    verify: bool = True
    resume: bool = False
    codec_pipeline: CodecPipeline | None = "zarrs"
    store_backend: Backend | None = None
    progress: Progress | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "memory", parse_size(self.memory, "--memory"))
        workers = self.workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ApplyError(f"--workers {workers!r}: give a whole number of workers, 1 or more")
        if self.codec_pipeline not in (*CODEC_PIPELINE_NAMES, None):
            raise ApplyError(
                f"--codec-pipeline {self.codec_pipeline!r}: use one of "
                f"{', '.join(CODEC_PIPELINE_NAMES)}"
            )
        if self.store_backend not in (*BACKENDS, None):
            raise ApplyError(
                f"--store-backend {self.store_backend!r}: use one of {', '.join(BACKENDS)}"
            )

    @property
    def budget(self) -> int:
        """``memory`` in bytes."""
        return cast(int, self.memory)

    @classmethod
    def merged(cls, options: RunOptions | None = None, **given: Any) -> RunOptions:
        """``options`` (or the defaults) with the keywords that were given (not None) in
        place of its settings: the one way the API's keywords become options."""
        chosen = {name: value for name, value in given.items() if value is not None}
        if options is None:
            return cls(**chosen)
        return replace(options, **chosen) if chosen else options


__all__ = ["BACKENDS", "CODEC_PIPELINE_NAMES", "Backend", "CodecPipeline", "Progress", "RunOptions"]
