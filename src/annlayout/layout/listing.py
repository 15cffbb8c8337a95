"""The listing of the shipped layouts (``annlayout layouts``).

Listing needs a layout's name, target and description only. Reading those with libyaml, without
pydantic, keeps ``annlayout layouts`` at a fraction of the start-up of validating six files
(pydantic and the models cost ~0.2 s). A file whose listed fields are not plainly valid, or
that extends another, is loaded in full, so its problems are reported with file, line and
field exactly as :func:`~annlayout.layout.files.load_layout` reports them (imported then, not
before: the listing sits above the loader). The rest of a shipped file (its rules) is validated
when it is used, and for every shipped file by the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from annlayout.layout.shipped import shipped_layouts

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # Layout.name's pattern
_TARGET_KEYS = frozenset({"format", "zarr_format", "consolidate_metadata"})


@dataclass(frozen=True)
class Listing:
    """One line of ``annlayout layouts``."""

    name: str
    target: str  # "zarr v3", "zarr v2" or "h5ad"
    description: str


def shipped_listing() -> list[Listing]:
    """Name, target and description of every shipped layout.

    Raises :class:`~annlayout.base.errors.LayoutError` for a file whose listed fields are wrong.
    """
    listing = []
    for name, path in shipped_layouts().items():
        entry = _read_listing(name, path)
        if entry is None:
            from annlayout.layout.files import load_layout

            layout = load_layout(path)  # raises the located problems
            target = layout.target
            entry = Listing(name, _where(target.format, target.zarr_format), layout.description)
        listing.append(entry)
    return listing


def _read_listing(name: str, path: Path) -> Listing | None:
    """The listing of a plainly valid file without ``extends``; None for anything else."""
    try:
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(data, dict) or "extends" in data:
        return None
    description = data.get("description", "")
    target = data.get("target", {})
    if not (
        _is(data.get("annlayout"), int, (1,))
        and isinstance(data.get("name"), str)
        and _NAME.match(data["name"])
        and isinstance(description, str)
        and isinstance(target, dict)
        and set(target) <= _TARGET_KEYS
        and _is(target.get("format", "zarr"), str, ("zarr", "h5ad"))
        and _is(target.get("zarr_format", 3), int, (2, 3))
        and _is(target.get("consolidate_metadata", True), bool, (True, False))
    ):
        return None
    where = _where(target.get("format", "zarr"), target.get("zarr_format", 3))
    return Listing(name, where, description)


def _is(value: Any, kind: type, allowed: tuple) -> bool:
    return type(value) is kind and value in allowed  # type(): True is not the integer 1


def _where(fmt: str, zarr_format: int) -> str:
    return "h5ad" if fmt == "h5ad" else f"zarr v{zarr_format}"


__all__ = ["Listing", "shipped_listing"]
