"""A store on object storage replaced by a staged copy, with a journal to undo it.

Object stores have no rename: a local store is swapped for its rebuilt sibling in one
``renameat2``, but a store under an ``s3://`` URL can only be changed object by object. So
:func:`commit` first copies every object it will overwrite or delete into a hidden sibling
prefix (``.NAME.annlayout-journal/backup/``) and writes ``journal.json`` there, which lists
the store's objects before. Then it removes the store's root metadata (from then on every
reader refuses the store as incomplete: the convention of :func:`annlayout.storage.remote.remove`),
copies the staged objects over, deletes what the staged copy lacks, and writes the root
metadata last. A failure on the way is undone at once; a kill leaves the journal, and
:func:`roll_back` (which the next ``append`` calls first) restores the store from it, byte
for byte, unless the store already holds the new root metadata (the journal records its
digests): then the commit had finished and only its journal is cleared. All copies are
server-side (S3 CopyObject): no bytes come down to this machine.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection
from contextlib import suppress
from typing import Literal

from annlayout.storage.remote import (
    ROOT_LAST,
    ROOT_METADATA,
    copy_objects,
    delete_objects,
    listing,
    read_object,
    remove,
    write_object,
)

JOURNAL_SUFFIX = ".annlayout-journal"


def journal_url(store: str) -> str:
    """The hidden sibling prefix that holds a commit's backup and journal."""
    parent, _, name = store.rstrip("/").rpartition("/")
    return f"{parent}/.{name}{JOURNAL_SUFFIX}"


def has_journal(store: str) -> bool:
    """Whether a commit to ``store`` was cut short after it began changing the store."""
    try:
        read_object(f"{journal_url(store)}/journal.json")
    except FileNotFoundError:
        return False
    return True


def commit(
    staged: str,
    store: str,
    unchanged: Collection[str],
    *,
    between: Callable[[], None] | None = None,
) -> None:
    """Make ``store`` hold exactly the objects of ``staged``: those in ``unchanged`` are
    already the store's own (copied from it), the rest are copied over and the store's
    objects that ``staged`` lacks are deleted. Undone on any failure; ``between`` (called
    between steps) may raise to stop."""
    journal = journal_url(store)
    old, new = listing(store), listing(staged)
    changed = [name for name in new if name not in unchanged]
    gone = [name for name in old if name not in new]
    roots = [name for name in old if name in ROOT_METADATA]
    backup = sorted({*roots, *(set(changed) & old.keys()), *gone})
    remove(journal)
    copy_objects(store, f"{journal}/backup", backup)
    new_roots = {name: _digest(f"{staged}/{name}") for name in ROOT_METADATA if name in new}
    record = {"objects": sorted(old), "backup": backup, "roots": new_roots}
    write_object(f"{journal}/journal.json", json.dumps(record).encode())  # the backup is whole
    try:
        delete_objects(store, roots)  # the store is incomplete from here until its new root
        for batch in _batches([n for n in changed if n not in ROOT_METADATA]):
            if between:
                between()
            copy_objects(staged, store, batch)
        delete_objects(store, [name for name in gone if name not in ROOT_METADATA])
        for name in ROOT_LAST:
            if name in new:
                copy_objects(staged, store, [name])
    except BaseException:
        roll_back(store)
        raise
    with suppress(Exception):  # done: a journal left behind is recognised as finished
        _clear(journal)


def roll_back(store: str) -> Literal["restored", "finished"] | None:
    """Restore ``store`` from the journal of a commit that was cut short: "restored"; or, if
    the store holds the commit's new root metadata already (it was cut short only while
    clearing its journal), clear the journal: "finished". None where there is no journal.
    Safe to repeat: a roll-back cut short is finished by the next."""
    journal = journal_url(store)
    try:
        record = json.loads(read_object(f"{journal}/journal.json"))
    except FileNotFoundError:  # no commit began, or its backup was not whole: store untouched
        remove(journal)
        return None
    if _finished(store, journal, record):
        _clear(journal)
        return "finished"
    before = set(record["objects"])
    backup = list(record["backup"])
    delete_objects(store, [name for name in ROOT_METADATA if name in before])
    copy_objects(f"{journal}/backup", store, [n for n in backup if n not in ROOT_METADATA])
    added = [name for name in listing(store) if name not in before]
    delete_objects(store, added)
    for name in ROOT_LAST:
        if name in backup:
            copy_objects(f"{journal}/backup", store, [name])
    _clear(journal)
    return "restored"


def _finished(store: str, journal: str, record: dict) -> bool:
    """Whether the store's root metadata is the commit's new one (and not its old one)."""
    roots = record.get("roots") or {}
    if not roots:
        return False
    try:
        now = {name: _digest(f"{store}/{name}") for name in roots}
    except FileNotFoundError:  # a root not written yet
        return False
    if now != roots:
        return False
    old = {}
    for name in roots:
        try:
            old[name] = _digest(f"{journal}/backup/{name}")
        except FileNotFoundError:
            old[name] = ""
    return old != roots


def _digest(url: str) -> str:
    return hashlib.sha256(read_object(url)).hexdigest()


def _clear(journal: str) -> None:
    delete_objects(journal, ["journal.json"])  # first: a journal without it means nothing
    remove(journal)


def _batches(names: list[str], size: int = 256) -> list[list[str]]:
    return [names[start : start + size] for start in range(0, len(names), size)]
