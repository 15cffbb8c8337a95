"""A store on object storage replaced by a staged copy, with a journal to undo it.

Object stores have no rename: a local store is swapped for its rebuilt sibling in one
``renameat2``, but a store under an ``s3://`` URL can only be changed object by object. So
:func:`commit` first copies every object it will overwrite or delete into a hidden sibling
prefix (``.NAME.annlayout-journal/backup/``) and writes ``journal.json`` there, which lists
the store's objects before. Then it removes the store's root metadata (from then on every
reader refuses the store as incomplete: the convention of :func:`annlayout.remote.remove`),
copies the staged objects over, deletes what the staged copy lacks, and writes the root
metadata last. A failure on the way is undone at once; a kill leaves the journal, and
:func:`roll_back` (which the next ``append`` calls first) restores the store from it, byte
for byte. All copies are server-side (S3 CopyObject): no bytes come down to this machine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection

from annlayout.remote import (
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
    record = {"objects": sorted(old), "backup": backup}
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
    delete_objects(journal, ["journal.json"])
    remove(journal)


def roll_back(store: str) -> bool:
    """Restore ``store`` from the journal of a commit that did not finish; True if there
    was one. Safe to repeat: a roll-back cut short is finished by the next."""
    journal = journal_url(store)
    try:
        record = json.loads(read_object(f"{journal}/journal.json"))
    except FileNotFoundError:  # no commit began, or its backup was not whole: store untouched
        remove(journal)
        return False
    before = set(record["objects"])
    backup = list(record["backup"])
    delete_objects(store, [name for name in ROOT_METADATA if name in before])
    copy_objects(f"{journal}/backup", store, [n for n in backup if n not in ROOT_METADATA])
    added = [name for name in listing(store) if name not in before]
    delete_objects(store, added)
    for name in ROOT_LAST:
        if name in backup:
            copy_objects(f"{journal}/backup", store, [name])
    delete_objects(journal, ["journal.json"])
    remove(journal)
    return True


def _batches(names: list[str], size: int = 256) -> list[list[str]]:
    return [names[start : start + size] for start in range(0, len(names), size)]
