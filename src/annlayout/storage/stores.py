"""Where AnnData stores live and how they are opened: local paths, URLs, h5ad files, zarr;
what annlayout records in the stores it writes (provenance, consolidated metadata).

One opened root is passed down to whatever reads it (survey, verify, the rewrite), rather
than each reopening the store: on object storage every open is a round trip.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from annlayout.base.errors import ApplyError, NotAnnDataError
from annlayout.base.version import package_version
from annlayout.format.encodings import PROVENANCE_KEY, Upgraded, attr, json_attr, read_upgraded
from annlayout.storage.h5 import register_source
from annlayout.storage.journal import has_journal
from annlayout.storage.remote import RemoteObject, is_url, listing, remote_zarr_store, zarr_exists

if TYPE_CHECKING:
    from annlayout.layout.models import Layout


Mode = Literal["r", "r+", "a", "w", "w-"]


def provenance(layout: Layout) -> dict[str, Any]:
    """What annlayout records in a store it wrote (``PROVENANCE_KEY``): the layout, resolved."""
    return {
        "layout": layout.name,
        "layout_sha256": layout.sha256(),
        "resolved_layout": layout.canonical(),
        "annlayout_version": package_version(),
        "complete": True,  # the last write; object stores have no rename to mark completion
    }


def consolidate_metadata(path: str | Path, zarr_format: Literal[2, 3]) -> None:
    """Write a zarr store's consolidated metadata (one request opens it).

    zarr warns, on every call for a v3 store, that its specification does not cover
    consolidated metadata yet; a layout asks for it on purpose, so the warning is silenced
    here, for this call only, rather than for every program that imports annlayout.
    """
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Consolidated metadata is currently not part", category=UserWarning
        )
        zarr.consolidate_metadata(zarr_store(path, read_only=False), zarr_format=zarr_format)


def footprint(location: str | Path) -> tuple[int, int]:
    """(bytes, objects) of a store: a file, a directory, or everything under a URL."""
    if is_url(location):
        sizes = listing(str(location))
        return sum(sizes.values()), len(sizes)
    path = Path(location)
    if path.is_file():
        return path.stat().st_size, 1
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


#: The names each store format goes by. anndata's readers, and users, tell the formats apart
#: by name: an h5ad file named .zarr (or a zarr directory named .h5ad) is refused.
FORMAT_SUFFIXES: dict[str, tuple[str, ...]] = {"h5ad": (".h5ad", ".h5"), "zarr": (".zarr",)}


def check_output_name(output: str | Path, fmt: str, layout_name: str) -> None:
    """Refuse an output named for the other store format than ``layout_name`` writes."""
    suffix = Path(str(output).rstrip("/")).suffix.lower()
    for other, suffixes in FORMAT_SUFFIXES.items():
        if other != fmt and suffix in suffixes:
            raise ApplyError(
                f"{output}: layout {layout_name!r} writes {fmt}, but the name ends in {suffix}; "
                f"name the output *{FORMAT_SUFFIXES[fmt][0]}, or choose a layout that writes "
                f"{other}"
            )


def fingerprint(locations: Sequence[Any], **options: Any) -> str:
    """A digest of what ``locations`` hold and of ``options``: every file's (or object's)
    relative path and size, and a local file's modification time. A store changed inside its
    directory or prefix changes it, so --resume never continues from other inputs. The one
    fingerprint of inputs: apply's, concat's and append's checkpoints compare it."""
    described = []
    for location in locations:
        files: list[tuple[Any, ...]]
        if is_url(location):
            files = sorted(listing(str(location)).items())
        else:
            path = Path(location)
            found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            files = [(p.relative_to(path).as_posix(), *_size_and_time(p)) for p in found]
        described.append({"location": str(location), "files": files})
    blob = json.dumps({"inputs": described, **options}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _size_and_time(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def zarr_store(location: str | Path, *, read_only: bool = True) -> Any:
    """What zarr opens for a location: the path itself, or a URL's store through the chosen
    client (:mod:`annlayout.storage.remote`)."""
    if is_url(location):
        return remote_zarr_store(str(location), read_only=read_only)
    return str(location)


def detect_format(path: str | Path) -> Literal["zarr", "h5ad"]:
    """Which kind of AnnData store ``path`` is; a one-line error if it is none."""
    return _locate(path)[0]


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _locate(path: Any) -> tuple[Literal["zarr", "h5ad"], RemoteObject | None]:
    """The format of ``path``, and for an h5ad object on object storage the object opened
    (its first block read, for :func:`_open_root` to open without asking again)."""
    import h5py

    if not isinstance(path, str | Path):  # a zarr Store object (e.g. a measured store)
        return "zarr", None
    if is_url(path):
        url = str(path).rstrip("/")
        # an object named for h5ad is looked for first (one HEAD, not three and a listing);
        # any other name only when there is no zarr store
        named_h5ad = Path(url).suffix.lower() in FORMAT_SUFFIXES["h5ad"]
        try:
            remote = _h5ad_object(url) if named_h5ad else None
            if remote is not None:
                return "h5ad", remote
            found = zarr_exists(url)
            leftovers = not found and bool(listing(url))
            if not found and not leftovers and not named_h5ad:
                remote = _h5ad_object(url)
                if remote is not None:
                    return "h5ad", remote
        except NotAnnDataError:
            raise
        except Exception as err:
            raise NotAnnDataError(f"{path}: cannot reach: {str(err).splitlines()[0]}") from None
        if leftovers and has_journal(url):
            raise NotAnnDataError(
                f"{path}: an append to this store was cut short while it replaced objects; "
                "run the same annlayout append again (it restores the store from its journal "
                "first)"
            )
        if leftovers:  # the root goes up last and is removed first
            raise NotAnnDataError(
                f"{path}: an incomplete store (objects but no zarr.json/.zgroup: an upload or "
                "removal was cut short); apply again"
            )
        if not found and named_h5ad:
            raise NotAnnDataError(f"{path}: no such object (nor a zarr store under it)")
        if not found:
            raise NotAnnDataError(f"{path}: no zarr store there (no zarr.json/.zgroup)")
        return "zarr", None
    path = Path(path)
    if not path.exists():
        raise NotAnnDataError(f"{path}: no such file or directory")
    if path.is_dir():
        if any((path / name).exists() for name in ("zarr.json", ".zgroup")):
            return "zarr", None
        raise NotAnnDataError(f"{path}: a directory but not a zarr store (no zarr.json/.zgroup)")
    if h5py.is_hdf5(path):
        return "h5ad", None
    raise NotAnnDataError(f"{path}: not an AnnData store (neither h5ad nor zarr)")


def _h5ad_object(url: str) -> RemoteObject | None:
    """The object at ``url`` if it is an HDF5 file, None if there is no object; a one-line
    error for an object that is not HDF5 (checked in its first bytes, as ``h5py.is_hdf5``
    does: at byte 0, or after a user block of 512 bytes, 1 KiB, 2 KiB, ...)."""
    try:
        remote = RemoteObject(url)
    except FileNotFoundError:
        return None
    offset = 0
    while offset + len(HDF5_SIGNATURE) <= min(remote.size, remote.block_size):
        remote.seek(offset)
        if remote.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            return remote
        offset = 512 if offset == 0 else offset * 2
    raise NotAnnDataError(
        f"{url}: not an h5ad file (an object of {remote.size:,} bytes without HDF5's signature)"
    )


def open_store(path: str | Path, mode: Mode = "r") -> Any:
    """The root group of a store: a zarr Group or an h5py File."""
    fmt, remote = _locate(path)
    return _open_root(path, fmt, mode, remote)


def _open_root(path: Any, fmt: Literal["zarr", "h5ad"], mode: Mode, remote: Any = None) -> Any:
    if fmt == "h5ad":
        import h5py

        if is_url(path) and mode != "r":
            raise NotAnnDataError(f"{path}: an h5ad file on object storage can only be read")
        try:
            if not is_url(path):
                return h5py.File(path, mode)
            remote = remote or RemoteObject(str(path).rstrip("/"))
            root = h5py.File(remote, "r")
        except OSError as err:  # HDF5's own words name neither the file nor a likely cause
            raise NotAnnDataError(
                f"{path}: cannot open the h5ad file: {_hdf5_reason(err)}"
            ) from None
        register_source(root, remote)  # its datasets are read by byte range (storage/h5.py)
        return root
    import zarr

    try:
        store = (
            path if not isinstance(path, str | Path) else zarr_store(path, read_only=mode == "r")
        )
        return zarr.open_group(store=store, mode=mode)
    except Exception as err:  # zarr raises a variety of errors for broken metadata
        raise NotAnnDataError(f"{path}: cannot open as zarr: {err}") from None


def _hdf5_reason(error: OSError) -> str:
    """HDF5's open error in a user's terms (a cut-short download is the common case)."""
    text = str(error)
    truncated = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text)
    if truncated:
        have, want = (int(n) for n in truncated.groups())
        return (
            f"the file is truncated ({have:,} of {want:,} bytes): an incomplete download or "
            "copy; fetch it again"
        )
    if "signature" in text:
        return "not an HDF5 file"
    inner = re.search(r"\((.*)\)\s*$", text)
    return inner.group(1) if inner else text.splitlines()[0]


def check_anndata_root(root: Any, path: Any) -> dict[str, Any] | None:
    """Refuse what is not an AnnData store, or an annlayout store whose write did not finish.

    Returns the store's annlayout provenance, if any.
    """
    provenance = json_attr(root, PROVENANCE_KEY)  # first: an early kill leaves no obs/var
    if isinstance(provenance, dict) and provenance.get("complete") is False:
        raise NotAnnDataError(
            f"{path}: an incomplete annlayout store (its apply did not finish); apply again"
        )
    if attr(root, "encoding-type") not in (None, "anndata") or not (
        "obs" in root and "var" in root
    ):
        raise NotAnnDataError(f"{path}: not an AnnData store (no obs/var at its root)")
    return provenance


@dataclass
class AnnDataStore:
    """An opened AnnData store, handed to everything that reads it during one command (survey,
    rewrite, verify), so it is located, opened and checked once, and a legacy store is read
    by anndata once for survey and verify (:meth:`upgraded`)."""

    location: Any  # a path, a URL, or a zarr Store object
    format: Literal["zarr", "h5ad"]
    root: Any  # zarr Group or h5py File
    provenance: dict[str, Any] | None
    _upgraded: Upgraded | None = field(default=None, repr=False)

    def upgraded(self) -> Upgraded:
        """The store as anndata reads it, every array and sparse matrix left on disk (a
        stand-in; see :func:`annlayout.format.encodings.read_upgraded`)."""
        if self._upgraded is None:
            self._upgraded = read_upgraded(self.root, large=lambda path, node: True)
        return self._upgraded

    def close(self) -> None:
        if self.format == "h5ad":
            self.root.close()

    def __enter__(self) -> AnnDataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_anndata(location: Any) -> AnnDataStore:
    """Locate, open and check an AnnData store: a one-line error for anything else."""
    fmt, remote = _locate(location)
    root = _open_root(location, fmt, "r", remote)
    try:
        provenance = check_anndata_root(root, location)
    except BaseException:
        if fmt == "h5ad":
            root.close()
        raise
    return AnnDataStore(location=location, format=fmt, root=root, provenance=provenance)
