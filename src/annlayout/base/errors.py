"""Every error annlayout reports to a user derives from :class:`AnnlayoutError`.

Each carries a message of one line that names the file, element or option at fault (a layout
file's problems are several located lines). The CLI prints the message and exits non-zero;
anything else that escapes is a bug and says to rerun with ``--debug``. The built-in base
each class also derives from (ValueError, RuntimeError) keeps older ``except`` clauses working.
"""

from __future__ import annotations


class AnnlayoutError(Exception):
    """Base of the errors annlayout reports: the message is what the user sees."""


class LayoutError(AnnlayoutError, ValueError):
    """A layout (or workload) file has problems; ``messages`` holds one located line each."""

    def __init__(self, messages: list[str]):
        self.messages = messages
        super().__init__("\n".join(messages))


class NotAnnDataError(AnnlayoutError, ValueError):
    """The input is missing, unreachable, or not an AnnData store (or an incomplete one)."""


class ElementReadError(NotAnnDataError):
    """anndata cannot read one element of a store (an unknown encoding, a corrupt array)."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: cannot read: {reason}")


class UnknownEncodingError(NotAnnDataError):
    """An element whose encoding annlayout has not registered (a newer anndata's, another
    tool's), or one a behaviour has no entry for (row digests of a categorical, say)."""

    def __init__(self, element: str, encoding: str | None, behaviour: str | None = None):
        self.element, self.encoding, self.behaviour = element, encoding, behaviour
        if behaviour is None:
            super().__init__(f"{element}: unknown encoding {encoding!r}")
        else:
            super().__init__(f"{element}: no {behaviour} for encoding {encoding!r}")


class PlanError(AnnlayoutError, ValueError):
    """A layout cannot be applied to an element (e.g. int32 indices for 3 billion nonzeros)."""


class ApplyError(AnnlayoutError, RuntimeError):
    """Apply (or verify) refused or failed; the message names the path or element."""


class ChunkReadError(AnnlayoutError, ValueError):
    """A chunk or shard index read by byte range is corrupt or has the wrong size."""


class LoaderError(AnnlayoutError, ValueError):
    """A training loader cannot be made as asked (an option, a column, a store without X)."""


class BenchError(AnnlayoutError, RuntimeError):
    """A benchmark could not run, or a reader gave a wrong answer."""


class ConcatError(AnnlayoutError):
    """Inputs that cannot be combined."""


class AppendError(AnnlayoutError):
    """A store or inputs that cannot be appended."""


class UnreachableError(AnnlayoutError, ValueError):
    """A path or URL that the workers of a dask cluster cannot reach (a driver's local path,
    a bucket without their credentials): refused before any work starts."""


class IntegrityError(AnnlayoutError, RuntimeError):
    """Rows or values that do not add up while combining (a damaged scratch file, or a bug):
    the run stops rather than write a store with a gap."""


class CodecPipelineConflict(AnnlayoutError, RuntimeError):
    """Two runs in one process asked for different zarr codec pipelines at once: zarr has one
    process-wide setting (:mod:`annlayout.storage.pipeline`)."""


class GenerateError(AnnlayoutError, ValueError):
    """Sizes that describe no dataset (negative cells, fewer cells than files, ...)."""


__all__ = [
    "AnnlayoutError",
    "AppendError",
    "ApplyError",
    "BenchError",
    "ChunkReadError",
    "CodecPipelineConflict",
    "ConcatError",
    "ElementReadError",
    "GenerateError",
    "IntegrityError",
    "LayoutError",
    "LoaderError",
    "NotAnnDataError",
    "PlanError",
    "UnknownEncodingError",
    "UnreachableError",
]
