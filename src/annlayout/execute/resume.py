"""Resuming a killed apply.

What the prepare phase made (the blocks to copy, the transposes to run, the mirror records
to write at the end) is saved beside the output once the output's structure exists, and each
copy or transpose task appends a line to a journal when it completes. A run with ``resume``
whose input, layout and budget are those of the saved state reopens the partial output,
skips the prepare phase and the tasks in the journal, and runs the rest: a task killed
halfway is run again whole (it writes whole shards, so nothing of it survives half-done).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from annlayout.planning.memory import Block
from annlayout.planning.plan import ArrayPlan
from annlayout.storage.stores import fingerprint as input_fingerprint

RESUME_SUFFIX = ".annlayout-resume"
STATE = "prepared.json"
JOURNAL = "done.log"


def resume_dir(output: Path) -> Path:
    """Where an output's resume state lives: a hidden sibling, like its temporary store."""
    return output.with_name(f".{output.name}{RESUME_SUFFIX}")


def fingerprint(source: Any, **options: Any) -> str:
    """The input (every file's path and size, a local one's modification time) and the
    options that shape the blocks."""
    return input_fingerprint([source], **options)


@dataclass
class Prepared:
    """The prepare phase's result, by path (groups are reopened on resume)."""

    fingerprint: str
    blocks: list[Block]
    # (input element, output group, part plans): orientations built after the blocks
    transposes: list[tuple[str, str, dict[str, ArrayPlan]]]
    # (primary group, copy group, primary orientation): mirror records written at the end
    mirrors: list[tuple[str, str, str]]
    notes: list[str] = field(default_factory=list)
    streamed: list[str] = field(default_factory=list)
    upgrades: list[str] = field(default_factory=list)
    whole_bytes: int = 0


def save(directory: Path, prepared: Prepared) -> None:
    """The state as JSON (plain data: nothing in it runs when read), written whole (a
    temporary file renamed), and an empty journal."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / JOURNAL).write_text("")
    state = {
        **asdict(prepared),
        "blocks": [asdict(block) for block in prepared.blocks],
        "transposes": [
            [path, group, {name: plan.model_dump(mode="json") for name, plan in arrays.items()}]
            for path, group, arrays in prepared.transposes
        ],
    }
    partial = directory / f"{STATE}.partial"
    partial.write_text(json.dumps(state, default=_plain))
    partial.replace(directory / STATE)


def _plain(value: Any) -> Any:
    """numpy scalars (block bounds) as Python numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not plain data")


def load(directory: Path, expected: str) -> Prepared | None:
    """The saved state if it was made from the same input and options, else None (a
    missing or damaged state too: the run starts clean)."""
    try:
        state = json.loads((directory / STATE).read_text())
        if state.get("fingerprint") != expected:
            return None
        return Prepared(
            fingerprint=state["fingerprint"],
            blocks=[Block(**block) for block in state["blocks"]],
            transposes=[
                (path, group, {n: ArrayPlan.model_validate(p) for n, p in arrays.items()})
                for path, group, arrays in state["transposes"]
            ],
            mirrors=[(p, c, o) for p, c, o in state["mirrors"]],
            notes=list(state["notes"]),
            streamed=list(state["streamed"]),
            upgrades=list(state["upgrades"]),
            whole_bytes=int(state["whole_bytes"]),
        )
    except Exception:  # unreadable, or from another version: not resumable
        return None


def completed(directory: Path) -> set[str]:
    """The tasks the journal lists as done (a line cut short by a kill is not one)."""
    try:
        text = (directory / JOURNAL).read_text()
    except OSError:
        return set()
    return {line for line in text.split("\n")[:-1] if line}


def record(journal: str, key: str) -> None:
    """One completed task: a line appended (one write, so lines never interleave)."""
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key}\n".encode())
    finally:
        os.close(fd)
