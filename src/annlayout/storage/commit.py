"""Outputs that appear whole or not at all.

A local output is built in a hidden temporary sibling and renamed into place only when it is
complete (and verified). SIGTERM is turned into an exception so the same cleanup runs as for
Ctrl-C; a kill -9 leaves the sibling behind, and the next run removes it first.
"""

from __future__ import annotations

import contextvars
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from annlayout.base.errors import ApplyError

TMP_SUFFIX = ".annlayout-tmp"
OLD_SUFFIX = ".annlayout-old"


def temporary_sibling(output: Path) -> Path:
    return output.with_name(f".{output.name}{TMP_SUFFIX}")


def check_paths(source: Path, output: Path, *, overwrite: bool) -> None:
    source, output = source.resolve(), output.resolve()
    if output == source or source in output.parents:
        raise ApplyError(f"{output}: the output is the input or inside it; choose another path")
    if output.exists() and not overwrite:
        raise ApplyError(f"{output}: already exists (use --overwrite to replace it)")
    if not output.parent.is_dir():
        raise ApplyError(f"{output.parent}: the output's directory does not exist")
    check_writable(output)


def check_writable(output: Path) -> None:
    """Refuse, before any input is read, an output whose directory cannot be written (a
    read-only mount, another user's directory): found by writing there, as the run would."""
    try:
        with tempfile.NamedTemporaryFile(dir=output.parent, prefix=f".{output.name}.probe-"):
            pass
    except OSError as err:
        raise ApplyError(
            f"{output}: cannot write in {output.parent}: {err.strerror or err}"
        ) from None


def check_free_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise ApplyError(
            f"{directory}: not enough free disk: the output needs about {_gib(needed)}, "
            f"{_gib(free)} is free"
        )


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def replace(tmp: Path, output: Path) -> None:
    """Put ``tmp`` (complete) in place of ``output``: the one commit of a local output
    (apply, concat, append), safe against a kill at any point, which :func:`recover` mends.

    Where the filesystem exchanges names (Linux ``renameat2(RENAME_EXCHANGE)``: local
    filesystems, not NFS) the name never lacks a whole store: ``tmp`` is renamed to the
    sibling ``.NAME.annlayout-old``, exchanged with ``output`` in one step, and the sibling
    (the old store now) removed. Elsewhere the old store is set aside under that sibling's
    name, then ``tmp`` renamed into place; between those two renames the name is empty, and
    the sibling is the old store that :func:`recover` puts back.
    """
    if not (output.exists() or output.is_symlink()):
        tmp.rename(output)
        return
    old = old_sibling(output)
    remove(old)
    tmp.rename(old)  # the new store, whole, under the sibling's name
    if _exchange(old, output):
        remove(old)  # the old store
        return
    old.rename(tmp)  # no exchange here: set the old store aside instead
    output.rename(old)
    tmp.rename(output)
    remove(old)


def old_sibling(output: Path) -> Path:
    return output.with_name(f".{output.name}{OLD_SUFFIX}")


def recover(output: Path) -> str | None:
    """Mend what a kill inside :func:`replace` left (called before a run touches
    ``output``): with a store at the name, the sibling is the store that lost or the one
    that had not yet won, and is removed; without one, the sibling is the old store, put
    back. Says what it did, or None."""
    old = old_sibling(output)
    if not (old.exists() or old.is_symlink()):
        return None
    if output.exists() or output.is_symlink():
        remove(old)
        return f"removed {old}, left by a run stopped while it replaced {output}"
    old.rename(output)
    return f"{output}: put back from {old}, where a run stopped while it replaced it"


RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step; False where the system or filesystem cannot."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not Linux, or a libc without it
        return False
    return renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def remove(path: Path) -> None:
    """Remove a file or directory tree, waiting out writers that are still finishing."""
    for _ in range(50):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
        if not (path.exists() or path.is_symlink()):
            return
        time.sleep(0.1)
    raise ApplyError(f"{path}: could not remove it; remove it by hand")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM arrived; raised between blocks, so no write is left in flight. A
    KeyboardInterrupt, so Python code stopped by either handles it as Ctrl-C.

    ``kept``: what the run keeps for ``--resume`` (nothing else is left behind): a partial
    output, its journal, a scratch directory or prefix."""

    def __init__(self, signum: int, *kept: Path | str):
        self.signum, self.kept = signum, kept
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


_pending: list[int] = []


def check_interrupted() -> None:
    """Raise :class:`Interrupted` if a signal arrived; called between units of work."""
    if _pending:
        raise Interrupted(_pending[0])


@contextmanager
def _signals_handled(signums: tuple[int, ...], handler: Callable[..., None]) -> Iterator[bool]:
    """``handler`` for ``signums`` for the duration, the previous handlers after; yields
    whether it was installed (outside the main thread signals are left alone)."""
    previous = {}
    try:
        for signum in signums:
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        yield False
        return
    try:
        yield True
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


_deferring = 0  # deferred_interrupts entered in the main thread and not yet left


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into a flag that :func:`check_interrupted` raises on, between
    units of work; any other error raised after a signal was recorded is reported as the
    interrupt (it is its consequence, or came while the user stopped the run).

    Raising inside a signal handler would interrupt zarr while its event loop still writes
    chunks in another thread, so cleanup would race those writes; and a library interrupted
    inside its own code may turn the KeyboardInterrupt into another error (numpy's ``tofile``
    and ``savez`` raise a TypeError about the file). Nested (apply inside concat), the
    outermost keeps the handler and the flag: a signal between the two steps is not lost.
    """
    global _deferring
    if _deferring:
        with _reported_as_interrupt():
            yield
        return
    _pending.clear()

    def handler(signum, frame):
        _pending.append(signum)

    installed = False
    try:
        with _signals_handled((signal.SIGINT, signal.SIGTERM), handler) as installed:
            _deferring += installed
            try:
                with _reported_as_interrupt():
                    yield
            finally:
                _deferring -= installed
    finally:  # after the handlers are restored: a later signal is the default's
        if installed:
            _pending.clear()


@contextmanager
def _reported_as_interrupt() -> Iterator[None]:
    try:
        yield
    except Interrupted:
        raise
    except BaseException as err:
        if _pending:
            raise Interrupted(_pending[0]) from err
        raise


@contextmanager
def atomic_output(output: Path, *, keep: bool = False) -> Iterator[Path]:
    """Yield a temporary path; on success it becomes ``output``, on any failure it is removed
    (``keep``: a partial one left by a killed run is kept, and so is this run's on failure,
    for a resumed run to continue)."""
    tmp = temporary_sibling(output)
    if not keep:
        remove(tmp)  # left by a run that was killed
    recover(output)  # a kill inside replace()
    with deferred_interrupts():
        try:
            yield tmp
            replace(tmp, output)
        except BaseException:
            if not keep:
                remove(tmp)
            raise


def check_remote_paths(source: str, output: str, *, overwrite: bool) -> None:
    from annlayout.storage.remote import zarr_exists

    source, output = str(source).rstrip("/"), output.rstrip("/")
    if output == source or output.startswith(source + "/"):
        raise ApplyError(f"{output}: the output is the input or inside it; choose another path")
    if zarr_exists(output) and not overwrite:
        raise ApplyError(f"{output}: already exists (use --overwrite to replace it)")


@contextmanager
def remote_output(url: str) -> Iterator[str]:
    """Object stores cannot rename: write in place, marked incomplete until the last write.

    The store's root attributes say ``complete: false`` from the first write until
    :meth:`Rewriter.finish` replaces them, and readers refuse it meanwhile. An existing store
    is removed first; a failed run removes what it wrote where it can.
    """
    from annlayout.storage.remote import remove as remove_remote

    remove_remote(url)
    with deferred_interrupts():
        try:
            yield url
        except BaseException:
            with suppress(Exception):  # unreachable store: it stays marked incomplete
                remove_remote(url)
            raise


STAGING_ENV = "ANNLAYOUT_STAGING"
STAGING_MARGIN = 1.25  # free space asked for, over the output's estimated size


def staging_dir(needed: int) -> Path | None:
    """Where an output bound for object storage is built first, or None to write in place.

    ``$ANNLAYOUT_STAGING`` names the directory (``off``: always write in place); by default
    the system's temporary directory, when it has room for the output. Built locally, the
    output is written with the fast codec pipeline and verified at disk speed; then its
    objects go up concurrently, instead of each of anndata's small writes and verify's reads
    paying a round trip.
    """
    chosen = os.environ.get(STAGING_ENV, "").strip()
    if chosen.lower() == "off":
        return None
    directory = Path(chosen or tempfile.gettempdir())
    if not directory.is_dir():
        raise ApplyError(f"{directory}: ${STAGING_ENV} is not a directory")
    if shutil.disk_usage(directory).free < needed * STAGING_MARGIN:
        if chosen:
            check_free_space(directory, int(needed * STAGING_MARGIN))
        return None  # no room: write in place, slower but within the same guarantees
    return directory


class _Abandoned(Exception):
    """Stops a background upload whose store failed."""


class StagedRemoteOutput:
    """``with StagedRemoteOutput(url, staging) as local:`` build the store in ``local``; on
    success it replaces ``url``, root metadata last.

    A build that fails or is interrupted never touches ``url`` (an existing store there
    stays whole); an upload cut short leaves objects without a root, which every reader
    refuses as incomplete; a failed upload removes what it wrote where it can.
    :meth:`send_objects` starts the upload of everything but the root while the caller
    still verifies the local store, where ``url`` holds nothing yet; a failure then removes
    what went up, and the root goes up only on success.
    """

    def __init__(
        self, url: str, staging: Path, progress: Callable[[str, int, int], None] | None = None
    ):
        self.url, self.staging, self.progress = url, staging, progress
        self._stack = ExitStack()
        self._sending: Future[None] | None = None
        self._stop = threading.Event()

    def __enter__(self) -> Path:
        tmp = self._stack.enter_context(
            tempfile.TemporaryDirectory(prefix=".annlayout-staging-", dir=self.staging)
        )
        self._stack.enter_context(deferred_interrupts())
        self.local = Path(tmp) / Path(self.url).name
        return self.local

    def send_objects(self) -> None:
        """Send the built store's objects but its root, in the background. Not where a
        store (or anything) is at ``url``: that is replaced only by a store known good."""
        from annlayout.storage.remote import listing, upload_objects

        if self._sending is not None or listing(self.url):
            return
        sender = self._stack.enter_context(
            ThreadPoolExecutor(1, thread_name_prefix="annlayout-upload")
        )  # left before the staging directory is removed
        self._sending = sender.submit(  # in this thread's context: its object-store client
            contextvars.copy_context().run, upload_objects, self.local, self.url,
            between=self._between, progress=self.progress,
        )  # fmt: skip

    def _between(self) -> None:
        check_interrupted()
        if self._stop.is_set():
            raise _Abandoned

    def _abandon(self) -> None:
        """Stop the background upload, then remove what went up."""
        from annlayout.storage.remote import remove as remove_remote

        if self._sending is not None:
            self._stop.set()
            with suppress(BaseException):
                self._sending.result()
        with suppress(Exception):  # unreachable store: it has no root, refused as such
            remove_remote(self.url)

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        from annlayout.storage.remote import remove as remove_remote
        from annlayout.storage.remote import upload

        with self._stack:
            if kind is not None:  # the build or its verification failed
                if self._sending is not None:
                    self._abandon()
                return
            try:
                check_interrupted()
                if self._sending is None:
                    remove_remote(self.url)
                else:
                    self._sending.result()  # its failure is the upload's
                upload(
                    self.local, self.url, between=check_interrupted, progress=self.progress,
                    objects_sent=self._sending is not None,
                )  # fmt: skip
            except BaseException:
                self._abandon()
                raise
