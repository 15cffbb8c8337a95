"""Helpers the benchmark suites share: store footprints and plain-text tables."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


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


def publish(
    benchmark: Any,
    directory: Path,
    stem: str,
    report: Mapping[str, Any],
    table: str,
    terminal_report: list[str],
) -> None:
    """Save ``{stem}.json`` and ``{stem}.txt`` (the only thing the ratio test times), and show
    the table now and in the terminal summary."""

    def save() -> None:
        (directory / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        (directory / f"{stem}.txt").write_text(table + "\n")

    benchmark.pedantic(save, rounds=1, iterations=1)
    saved = f"saved: {directory / stem}.txt and {directory / stem}.json"
    terminal_report.extend([table, saved])
    print(f"\n{table}\n{saved}")
