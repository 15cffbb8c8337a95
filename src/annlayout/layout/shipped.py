"""The layouts that ship with annlayout: where they are.

Apart from the listing (:mod:`annlayout.layout.listing`) so that the loader
(:mod:`annlayout.layout.files`) finds shipped layouts by name, and the listing loads an
irregular file through the loader, with no import cycle between them.
"""

from __future__ import annotations

from pathlib import Path


def layouts_dir() -> Path:
    """Where the shipped layouts live: inside the wheel, or ``layouts/`` of a source checkout."""
    packaged = Path(__file__).resolve().parents[1] / "layouts"  # annlayout/layouts in the wheel
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "layouts"


def shipped_layouts() -> dict[str, Path]:
    """The shipped layouts' names and files."""
    return {p.stem: p for p in sorted(layouts_dir().glob("*.yaml"))}


__all__ = ["layouts_dir", "shipped_layouts"]
