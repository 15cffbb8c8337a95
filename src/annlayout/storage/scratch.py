"""Scratch files at a location the driver and every worker reach: a local directory, or a
prefix on object storage (a cluster's workers share no disk with the driver, only the bucket).

Locations are strings, joined with ``/``. Every write is whole or absent (a local file is
written under a temporary name and renamed; an object store's PUT is atomic), so a file that
exists marks finished work, which a resumed run skips.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from annlayout.storage.remote import is_url


def join(location: str, *names: str) -> str:
    return "/".join([str(location).rstrip("/"), *names])


def write_bytes(location: str, data: bytes | memoryview) -> None:
    if is_url(location):
        from annlayout.storage.remote import write_object

        write_object(location, bytes(data))
        return
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    partial.write_bytes(data)
    partial.replace(path)


def put_file(local: Path, location: str) -> None:
    """The file ``local`` (then removed) becomes ``location``, whole."""
    if is_url(location):
        from annlayout.storage.remote import chosen_backend, filesystem

        if chosen_backend() == "obstore":
            import obstore

            from annlayout.storage.remote import _split

            client, key = _split(location)
            with open(local, "rb") as source:
                obstore.put(client, key, source)  # in parts when large
        else:
            filesystem(location).put_file(str(local), location)
        local.unlink()
        return
    target = Path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    shutil.move(local, partial)  # a rename on one file system
    partial.replace(target)


def read_bytes(location: str) -> bytes:
    """FileNotFoundError when there is nothing there."""
    if is_url(location):
        from annlayout.storage.remote import read_object

        return read_object(location)
    return Path(location).read_bytes()


def read_range(location: str, start: int, stop: int) -> bytes:
    """Bytes ``start:stop`` of a file: one ranged GET on object storage."""
    if stop <= start:
        return b""
    if is_url(location):
        from annlayout.storage.remote import chosen_backend, filesystem

        if chosen_backend() == "obstore":
            import obstore

            from annlayout.storage.remote import _split

            client, key = _split(location)
            return bytes(obstore.get_range(client, key, start=start, end=stop))
        return bytes(filesystem(location).cat_file(location, start, stop))
    with open(location, "rb") as file:
        file.seek(start)
        return file.read(stop - start)


def exists(location: str) -> bool:
    """Whether a file (one object) is at ``location``."""
    if is_url(location):
        from annlayout.storage.remote import object_info

        try:
            object_info(location)
        except FileNotFoundError:
            return False
        return True
    return os.path.isfile(location)


def names(location: str) -> list[str]:
    """The files under ``location``, relative to it."""
    if is_url(location):
        from annlayout.storage.remote import listing

        return sorted(listing(location))
    root = Path(location)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def remove(location: str) -> None:
    """The file at ``location``, or everything under it (nothing there is no error)."""
    if is_url(location):
        from annlayout.storage.remote import delete_objects
        from annlayout.storage.remote import remove as remove_objects

        remove_objects(location)  # what is under it, then the object itself
        parent, _, leaf = location.rstrip("/").rpartition("/")
        delete_objects(parent, [leaf])
        return
    from annlayout.storage.commit import remove as remove_path

    remove_path(Path(location))


def local(location: str) -> Path | None:
    """The path of a local location; None for a URL."""
    return None if is_url(location) else Path(location)
