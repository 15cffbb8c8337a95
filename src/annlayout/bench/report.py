"""Benchmark outputs: recommended.yaml, report.md, report.json and report.png."""

from __future__ import annotations

import json
from pathlib import Path

from annlayout.bench.candidates import Candidate
from annlayout.bench.readers import READERS
from annlayout.bench.runner import BenchResult
from annlayout.plan import human_size


def write_reports(result: BenchResult, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "recommended": out / "recommended.yaml",
        "markdown": out / "report.md",
        "json": out / "report.json",
        "png": out / "report.png",
    }
    paths["recommended"].write_text(result.winner.layout.to_yaml(header=_header(result)))
    paths["json"].write_text(json.dumps(result.summary(), indent=2))
    paths["markdown"].write_text(_markdown(result))
    _plot(result, paths["png"])
    return paths


def _ranked(result: BenchResult) -> list[Candidate]:
    return sorted(result.candidates, key=lambda c: (c.excluded is not None, c.score))


def _header(result: BenchResult) -> str:
    ranked = [c for c in _ranked(result) if c.excluded is None]
    winner = result.winner
    lines = [
        f"Recommended by `annlayout bench` for workload {result.workload.name!r} on "
        f"{result.storage.describe()} storage ({result.source}"
        + (f", sample of {result.sample:,} cells)." if result.sample else ")."),
        f"Won with score {winner.score:.2f} (1.00 = fastest on every pattern), "
        f"{human_size(winner.size)} on disk, {winner.objects:,} objects.",
    ]
    if len(ranked) > 1:
        second = ranked[1]
        lines.append(
            f"Runner-up {second.name}: score {second.score:.2f} "
            f"({second.score / winner.score:.2f}x the winner's)."
        )
    return "\n".join(lines)


def _markdown(result: BenchResult) -> str:
    lines = [
        f"# annlayout bench: {result.workload.name}",
        "",
        f"Storage: {result.storage.describe()}. Source: {result.source}."
        + (f" Sample: {result.sample:,} cells." if result.sample else ""),
        f"Recommended: **{result.winner.name}** (written to recommended.yaml).",
        "",
        "## Candidates",
        "",
        "| layout | score | write s | size | objects | X major per chunk | X orientations | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for c in _ranked(result):
        per_chunk = "-" if c.x_major_per_chunk is None else f"{c.x_major_per_chunk:,.0f}"
        lines.append(
            f"| {c.name} | {c.score:.2f} | {c.write_seconds:.2f} | {human_size(c.size)} | "
            f"{c.objects:,} | {per_chunk} | {'+'.join(c.x_orientations)} | {c.excluded or ''} |"
        )
    patterns = list(dict.fromkeys(r.pattern for c in result.candidates for r in c.results))
    for pattern in patterns:
        lines += [
            "",
            f"## {pattern}",
            "",
            "| layout | reader | operations | median ms | p95 ms | rows/s | requests per op "
            "| bytes read per op | peak memory |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in _ranked(result):
            for r in (r for r in c.results if r.pattern == pattern):
                lines.append(
                    f"| {c.name} | {r.reader} | {r.operations} | {r.median * 1e3:.1f} | "
                    f"{r.p95 * 1e3:.1f} | {r.throughput:,.0f} | {r.requests_per_op:,.1f} | "
                    f"{human_size(int(r.bytes_per_op))} | {human_size(r.peak_memory)} |"
                )
    return "\n".join(lines) + "\n"


def _plot(result: BenchResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = _ranked(result)
    patterns = list(dict.fromkeys(r.pattern for c in ranked for r in c.results))
    figure, axes = plt.subplots(1, len(patterns) + 1, figsize=(4.2 * (len(patterns) + 1), 4))
    names = [c.name for c in ranked]
    for axis, pattern in zip(axes, patterns, strict=False):
        for offset, reader in zip((-0.27, 0.0, 0.27), READERS, strict=True):
            values = [
                next(
                    (
                        r.median * 1e3
                        for r in c.results
                        if r.pattern == pattern and r.reader == reader
                    ),
                    0,
                )
                for c in ranked
            ]
            axis.barh([i + offset for i in range(len(names))], values, height=0.27, label=reader)
        axis.set_yticks(range(len(names)), names, fontsize=8)
        axis.set_xlabel("median ms per operation")
        axis.set_title(pattern, fontsize=10)
        axis.invert_yaxis()
    axes[0].legend(fontsize=8)
    scatter = axes[-1]
    scatter.scatter([c.size / 1e6 for c in ranked], [c.score for c in ranked])
    for c in ranked:
        scatter.annotate(c.name, (c.size / 1e6, c.score), fontsize=7)
    scatter.set_xlabel("size on disk (MB)")
    scatter.set_ylabel("score (lower is better)")
    scatter.set_title("size against speed", fontsize=10)
    figure.suptitle(f"workload {result.workload.name}, {result.storage.describe()} storage")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
