"""Benchmark outputs: recommended.yaml, report.md, report.json and report.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from annlayout.bench.candidates import Candidate
from annlayout.bench.cost import money
from annlayout.bench.readers import READERS
from annlayout.bench.runner import BenchResult
from annlayout.bench.score import rank_key
from annlayout.bench.workloads import EPOCH_DEFINITIONS, pattern_label
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


def outcome(result: BenchResult, paths: dict[str, Path]) -> dict[str, Any]:
    """The run in one small document (``bench --json``): what won, by how much, what it
    costs, where the reports are, and which readers were not measured."""
    winner = result.winner
    return {
        "workload": result.workload.name,
        "objective": result.objective,
        "recommended": winner.name,
        "score": winner.score,
        "cost_per_epoch": winner.cost_per_epoch,
        "currency": result.prices.currency,
        "reports": {kind: str(path) for kind, path in paths.items()},
        "skipped_readers": result.skipped(),
    }


def _ranked(result: BenchResult) -> list[Candidate]:
    return sorted(
        result.candidates, key=lambda c: (c.excluded is not None, rank_key(c, result.objective))
    )


def _requests_text(candidate: Candidate) -> str:
    """e.g. '12,345 GET, 3 LIST' per workload epoch (kinds with none left out)."""
    counts = candidate.requests_per_epoch()
    text = ", ".join(f"{n:,.0f} {kind}" for kind, n in counts.items() if round(n))
    return text or "no requests"


def _why(result: BenchResult) -> str:
    """One line: the objective, the winner's figure under it, and how far ahead it is."""
    ranked = [c for c in _ranked(result) if c.excluded is None]
    winner = result.winner
    second = ranked[1] if len(ranked) > 1 else None
    dollars = (
        f"${money(winner.cost_per_epoch)} per epoch ({_requests_text(winner)}, "
        f"{human_size(int(winner.bytes_per_epoch()))} read)"
    )
    objective = result.objective
    if objective == "cost":
        line = f"recommended under --objective cost: {dollars}"
        if second is not None and second.cost_per_epoch > winner.cost_per_epoch:
            line += (
                f", {second.cost_per_epoch / winner.cost_per_epoch:.2f}x cheaper than {second.name}"
                if winner.cost_per_epoch
                else f", free where {second.name} costs ${money(second.cost_per_epoch)}"
            )
        elif second is not None:
            line += f", as cheap as {second.name} (the tie goes to the better score)"
    elif objective == "balanced":
        line = (
            f"recommended under --objective balanced: {winner.balanced:.2f} "
            f"(sqrt(score/best x cost/best); score {winner.score:.2f}, {dollars})"
        )
        if second is not None:
            line += f", {second.name} next at {second.balanced:.2f}"
    else:
        line = f"recommended under --objective time: score {winner.score:.2f}, {dollars}"
        if second is not None:
            line += f", {second.score / winner.score:.2f}x faster than {second.name}"
    return line + "."


def _header(result: BenchResult) -> str:
    ranked = [c for c in _ranked(result) if c.excluded is None]
    winner = result.winner
    lines = [
        f"Recommended by `annlayout bench` for workload {result.workload.name!r} on "
        f"{result.storage.describe()} storage ({result.source}"
        + (f", sample of {result.sample:,} cells)." if result.sample else ")."),
        f"Won with score {winner.score:.2f} (1.00 = fastest on every pattern), "
        f"{human_size(winner.size)} on disk, {winner.objects:,} objects.",
        _why(result)[0].upper() + _why(result)[1:],
        f"Prices: {result.prices.describe()}; an epoch is one pass of every pattern over "
        f"the full {result.full_shape[0]:,} x {result.full_shape[1]:,} dataset.",
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
        f"Recommended: **{result.winner.name}** (written to recommended.yaml), {_why(result)}",
        f"Objective: {result.objective}. Prices: {result.prices.describe()}.",
        *(
            f"Skipped reader: {reader}, not measured ({reason})."
            for reader, reason in result.skipped_readers.items()
        ),
        "",
        "## Candidates",
        "",
        "| layout | score | $ per epoch | balanced | write s | size | objects "
        "| X major per chunk | X orientations | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for c in _ranked(result):
        per_chunk = "-" if c.x_major_per_chunk is None else f"{c.x_major_per_chunk:,.0f}"
        lines.append(
            f"| {c.name} | {c.score:.2f} | {money(c.cost_per_epoch)} | {c.balanced:.2f} | "
            f"{c.write_seconds:.2f} | {human_size(c.size)} | "
            f"{c.objects:,} | {per_chunk} | {'+'.join(c.x_orientations)} | {c.excluded or ''} |"
        )
    lines += _cost_section(result)
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


def _cost_section(result: BenchResult) -> list[str]:
    rows, cols = result.full_shape
    sampled = (
        f" Requests and bytes per operation are measured on the {result.sample:,}-cell sample; "
        f"operations per epoch are counted on the full dataset ({rows:,} cells x {cols:,} "
        "genes), so patterns that read every cell (gene queries, obs columns) read more per "
        "operation on the full dataset than shown."
        if result.sample
        else ""
    )
    lines = [
        "",
        "## Cost",
        "",
        f"Objective: **{result.objective}** (time: lowest score; cost: fewest dollars per "
        "workload epoch; balanced: lowest sqrt(score / best score x cost / best cost)).",
        f"Prices: {result.prices.describe()}.",
        "",
        f"An epoch is one full pass of a pattern over the dataset ({rows:,} x {cols:,}): "
        + "; ".join(
            f"{pattern_label(p)}: {EPOCH_DEFINITIONS[p.kind]} = {n:,} operations"
            for p, n in zip(result.workload.patterns, result.ops_per_epoch, strict=True)
        )
        + ". A workload epoch is one epoch of every pattern (weights do not multiply "
        "dollars); dollars are annlayout's reader's." + sampled,
        "",
        "| pattern | layout | ops per epoch | GET/op | PUT/op | LIST/op | HEAD/op | bytes/op "
        "| $ per op | $ per epoch |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for pattern in dict.fromkeys(r.pattern for c in result.candidates for r in c.ours()):
        for c in _ranked(result):
            for r in (r for r in c.ours() if r.pattern == pattern):
                per_op = r.per_op()
                lines.append(
                    f"| {pattern} | {c.name} | {r.ops_per_epoch:,} | {per_op['GET']:,.1f} | "
                    f"{per_op['PUT']:,.1f} | {per_op['LIST']:,.1f} | {per_op['HEAD']:,.1f} | "
                    f"{human_size(int(r.bytes_per_op))} | {money(r.dollars_per_op)} | "
                    f"{money(r.dollars_per_epoch)} |"
                )
    lines += ["", "| layout | $ per workload epoch | requests per epoch | bytes per epoch |"]
    lines.append("| --- | ---: | --- | ---: |")
    for c in _ranked(result):
        lines.append(
            f"| {c.name} | {money(c.cost_per_epoch)} | {_requests_text(c)} | "
            f"{human_size(int(c.bytes_per_epoch()))} |"
        )
    return lines


def _plot(result: BenchResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = _ranked(result)
    patterns = list(dict.fromkeys(r.pattern for c in ranked for r in c.results))
    panels = len(patterns) + 2
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4))
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
    dollars = axes[-2]
    dollars.barh(range(len(names)), [c.cost_per_epoch for c in ranked], color="tab:green")
    dollars.set_yticks(range(len(names)), names, fontsize=8)
    dollars.set_xlabel(f"{result.prices.currency} per workload epoch")
    dollars.set_title(f"cost per epoch ({result.prices.name})", fontsize=9)
    dollars.invert_yaxis()
    scatter = axes[-1]
    scatter.scatter([c.size / 1e6 for c in ranked], [c.score for c in ranked])
    for c in ranked:
        scatter.annotate(c.name, (c.size / 1e6, c.score), fontsize=7)
    scatter.set_xlabel("size on disk (MB)")
    scatter.set_ylabel("score (lower is better)")
    scatter.set_title("size against speed", fontsize=10)
    figure.suptitle(
        f"workload {result.workload.name}, {result.storage.describe()} storage, "
        f"--objective {result.objective} (winner {result.winner.name})"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
