"""Plain-text tables for the benchmark reports (shared by the suites)."""

from __future__ import annotations


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
