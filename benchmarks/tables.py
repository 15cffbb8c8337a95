"""Helpers the benchmark suites share: store footprints and plain-text tables."""

from __future__ import annotations

import os
from pathlib import Path


def footprint(path: Path) -> tuple[int, int]:
    """(number of files, total bytes) of a store directory."""
    n_files = n_bytes = 0
    for root, _, files in os.walk(path):
        for name in files:
            n_files += 1
            n_bytes += os.path.getsize(os.path.join(root, name))
    return n_files, n_bytes


def text_table(lines: list[tuple[str, ...]]) -> list[str]:
    """First column left-aligned, the rest right-aligned; a rule under the header row."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for i, line in enumerate(lines):
        cells = [
            line[0].ljust(widths[0]),
            *(c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)),
        ]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return out
