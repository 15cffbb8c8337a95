"""Benchmark outputs: recommended.yaml, report.md, report.json, report.png and report.svg."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from annlayout.bench.candidates import Candidate
from annlayout.bench.cost import money
from annlayout.bench.readers import READERS
from annlayout.bench.runner import BenchResult
from annlayout.bench.score import TIE_BREAK, figure, lead, margin, rank_key
from annlayout.bench.workloads import EPOCH_DEFINITIONS, pattern_label
from annlayout.planning.plan import human_size


def write_reports(result: BenchResult, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "recommended": out / "recommended.yaml",
        "markdown": out / "report.md",
        "json": out / "report.json",
        "png": out / "report.png",
        "svg": out / "report.svg",
    }
    paths["recommended"].write_text(result.winner.layout.to_yaml(header=_header(result)))
    data = result.summary()
    data["verdict"]["reason"] = reason(result)
    paths["json"].write_text(json.dumps(data, indent=2))
    paths["markdown"].write_text(_markdown(result))
    _plot(result, paths["png"], paths["svg"])
    return paths


def outcome(result: BenchResult, paths: dict[str, Path]) -> dict[str, Any]:
    """The run in one small document (``bench --json``): what won and why (a clear winner or
    a tie, and its tie-break), the intervals, what it costs, where the reports are, what the
    data is too small for, and which readers were not measured."""
    winner = result.winner
    return {
        "workload": result.workload.name,
        "objective": result.objective,
        "reader": result.reader,
        "recommended": winner.name,
        "verdict": {**result.verdict_summary(), "reason": reason(result)},
        "score": winner.score,
        "score_interval": [winner.low, winner.high],
        "interval": result.interval_rule(),
        "candidates": {c.name: _brief(c) for c in _ranked(result)},
        "cost_per_epoch": winner.cost_per_epoch,
        "warnings": result.warnings,
        "currency": result.prices.currency,
        "reports": {kind: str(path) for kind, path in paths.items()},
        "skipped_readers": result.skipped(),
        "loader": result.loader(),
    }


def _brief(c: Candidate) -> dict[str, Any]:
    return {
        "score": c.score, "score_interval": [c.low, c.high], "cost_per_epoch": c.cost_per_epoch,
        "size": c.size, "objects": c.objects, "excluded": c.excluded,
    }  # fmt: skip


def _ranked(result: BenchResult) -> list[Candidate]:
    return sorted(
        result.candidates, key=lambda c: (c.excluded is not None, rank_key(c, result.objective))
    )


def _requests_text(candidate: Candidate) -> str:
    """e.g. '12,345 GET, 3 LIST' per workload epoch (kinds with none left out)."""
    counts = candidate.requests_per_epoch()
    text = ", ".join(f"{n:,.0f} {kind}" for kind, n in counts.items() if round(n))
    return text or "no requests"


def _figure_text(candidate: Candidate, objective: str) -> str:
    """A candidate's figure under ``objective`` with its interval, e.g. 'score 1.04
    (1.00-1.09)'."""
    point, low, high = figure(candidate, objective)
    if objective == "cost":
        return f"${money(point)} per epoch"
    name = "score" if objective == "time" else "balanced"
    return f"{name} {point:.2f} ({low:.2f}-{high:.2f})"


def reason(result: BenchResult) -> str:
    """The verdict and its reason in two sentences: what is recommended (a clear winner, a
    tie and how it was broken, or the only candidate left), and the figures that say so."""
    chosen, objective = result.verdict, result.objective
    winner = result.winner
    whom = (
        f"workload {result.workload.name}, --objective {objective}, "
        f"{result.reader} reader, {result.rounds} rounds"
    )
    if chosen is None:
        return f"Recommended: {winner.name} ({whom})."
    others = [c for c in _ranked(result) if c.excluded is None and c is not winner]
    if chosen.kind == "only candidate":
        excluded = "; ".join(f"{c.name}: {c.excluded}" for c in result.candidates if c.excluded)
        return f"Recommended: {winner.name}, the only candidate left ({whom}). " + (
            f"The others are excluded ({excluded})." if excluded else "It was the only one."
        )
    every = "in every round" if objective != "cost" else "(counted, not timed)"
    if chosen.clear:
        nearest = min(others, key=lambda c: lead(winner, c, objective)[0])
        low, high = lead(winner, nearest, objective)
        return (
            f"Recommended: {winner.name}, the clear winner ({whom}). "
            f"It leads every other candidate {every} by more than {margin(objective):.0%}: "
            f"{_figure_text(winner, objective)}; the nearest, {nearest.name} "
            f"({_figure_text(nearest, objective)}), was {low:.2f}x-{high:.2f}x its figure "
            "round by round."
        )
    best = chosen.best
    behind = ", ".join(
        f"{c.name} ({_figure_text(c, objective)}; "
        + "{:.2f}x-{:.2f}x its figure round by round)".format(*lead(best, c, objective))
        for c in chosen.tied
        if c is not best
    )
    return (
        f"Recommended: {winner.name}, from a tie of {len(chosen.tied)} candidates ({whom}): "
        f"{best.name} ({_figure_text(best, objective)}) does not lead {behind} by more than "
        f"{margin(objective):.0%} {every}. "
        f"The tie is broken by {TIE_BREAK}: {winner.name} is {chosen.tie_break}."
    )


def loader_lines(result: BenchResult) -> list[str]:
    """The loader settings recommended with the layout, one sentence per training pattern,
    in the words of the call that takes them."""
    lines = []
    for entry in result.loader():
        block = (
            f"block={entry['block']}"
            if entry["block"]
            else f"block=None (the store's own chunks, ~{entry['block_rows']:,} rows)"
        )
        measured = entry["measured"]
        scaled = (
            f"; measured with batches of {measured['batch_size']:,} and buffer="
            f"{measured['buffer']:,}, the same number of batches per buffer"
            if measured["batch_size"] != entry["batch_size"]
            else ""
        )
        mixed = (
            f"mixing {entry['mixing']:.2f} of a true permutation's ({entry['label']}"
            + (f", min_mixing {entry['min_mixing']}" if entry["min_mixing"] is not None else "")
            + ")"
            if entry["mixing"] is not None
            else "mixing not measured (no label: give label: an obs column)"
        )
        call = (
            f"annbatch.Loader(batch_size={entry['batch_size']}, chunk_size="
            f"{entry['block_rows']}, preload_nchunks={entry['buffer']}, shuffle=True)"
            if entry["reader"] == "annbatch"
            else f"annlayout.open(store).batches({entry['batch_size']}, shuffle=True, {block}, "
            f"buffer={entry['buffer']:,})"
        )
        lines.append(
            f"Loader for {entry['pattern']}: {call} "
            f"(a buffer holds {entry['batches_per_buffer']:.1f} batches{scaled}); "
            f"{entry['cells_per_s']:,.0f} cells/s through the {entry['reader']} loader, {mixed}."
        )
    return lines


def _header(result: BenchResult) -> str:
    ranked = [c for c in _ranked(result) if c.excluded is None]
    winner = result.winner
    lines = [
        f"Recommended by `annlayout bench` for workload {result.workload.name!r} on "
        f"{result.storage.describe()} storage ({result.source}"
        + (f", sample of {result.sample:,} cells)." if result.sample else ")."),
        f"Score {winner.score:.2f} ({winner.low:.2f}-{winner.high:.2f} over "
        f"{result.rounds} rounds; 1.00 = fastest on every pattern), "
        f"{human_size(winner.size)} on disk, {winner.objects:,} objects.",
        reason(result),
        f"Per workload epoch: ${money(winner.cost_per_epoch)} ({_requests_text(winner)}, "
        f"{human_size(int(winner.bytes_per_epoch()))} read).",
        f"Prices: {result.prices.describe()}; an epoch is one pass of every pattern over "
        f"the full {result.full_shape[0]:,} x {result.full_shape[1]:,} dataset.",
        *loader_lines(result),
    ]
    if len(ranked) > 1:
        second = ranked[1]
        lines.append(
            f"Next: {second.name}, score {second.score:.2f} ({second.low:.2f}-{second.high:.2f})."
        )
    return "\n".join(lines)


def _markdown(result: BenchResult) -> str:
    verdict = result.verdict
    tied = {c.name for c in verdict.tied} if verdict and not verdict.clear else set()
    lines = [
        f"# annlayout bench: {result.workload.name}",
        "",
        reason(result).replace(
            f"Recommended: {result.winner.name}", f"Recommended: **{result.winner.name}**", 1
        ),
        "",
        f"Storage: {result.storage.describe()}. Source: {result.source}"
        + (
            f" ({result.full_shape[0]:,} cells; measured on a sample of {result.sample:,})."
            if result.sample
            else f" ({result.full_shape[0]:,} cells, all measured)."
        ),
        f"recommended.yaml holds {result.winner.name}. Objective: {result.objective}; the "
        f"candidates are scored with the {result.reader} reader. Each figure's interval: "
        f"{result.interval_rule()}. A tie is broken by {TIE_BREAK}.",
        f"Prices: {result.prices.describe()}.",
        *(f"\n**Warning:** {warning}." for warning in result.warnings),
        *(
            f"\nSkipped reader: {reader}, not measured ({why})."
            for reader, why in result.skipped_readers.items()
        ),
        *(["", "## Loader settings", "", *loader_lines(result)] if result.loader() else []),
        "",
        "## Candidates",
        "",
        "| layout | score | interval | $ per epoch | balanced | write s | size | objects "
        "| X major per chunk | X orientations | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for c in _ranked(result):
        per_chunk = "-" if c.x_major_per_chunk is None else f"{c.x_major_per_chunk:,.0f}"
        note = c.excluded or (
            "recommended" if c is result.winner else "tied" if c.name in tied else ""
        )
        lines.append(
            f"| {c.name} | {c.score:.2f} | {c.low:.2f}-{c.high:.2f} | "
            f"{money(c.cost_per_epoch)} | {c.balanced:.2f} | "
            f"{c.write_seconds:.2f} | {human_size(c.size)} | "
            f"{c.objects:,} | {per_chunk} | {'+'.join(c.x_orientations)} | {note} |"
        )
    lines += _cost_section(result)
    patterns = list(dict.fromkeys(r.pattern for c in result.candidates for r in c.results))
    for pattern in patterns:
        if any(r.settings for c in result.candidates for r in c.results if r.pattern == pattern):
            lines += _training_table(result, pattern)
            continue
        lines += [
            "",
            f"## {pattern}",
            "",
            "| layout | reader | operations | median ms | interval ms | p95 ms | rows/s "
            "| requests per op | bytes read per op | peak memory |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in _ranked(result):
            for r in (r for r in c.results if r.pattern == pattern):
                lines.append(
                    f"| {c.name} | {r.reader} | {r.operations} | {r.median * 1e3:.2f} | "
                    f"{r.low * 1e3:.2f}-{r.high * 1e3:.2f} | "
                    f"{r.p95 * 1e3:.2f} | {r.throughput:,.0f} | {r.requests_per_op:,.1f} | "
                    f"{human_size(int(r.bytes_per_op))} | {human_size(r.peak_memory)} |"
                )
    return "\n".join(lines) + "\n"


def _training_table(result: BenchResult, pattern: str) -> list[str]:
    """A training pattern's table: per candidate and loader, time per batch, cells/s, the
    mixing of its label and the settings replayed."""
    lines = [
        "",
        f"## {pattern}",
        "",
        "A round is one loader epoch (or the pattern's batches of it); ms per batch is a "
        "round's time over its batches. Mixing: mean entropy of the label per batch, bits, "
        "and its share of a true permutation's.",
        "",
        "| layout | reader | batches | ms per batch | interval ms | cells/s | mixing bits "
        "| of permutation | label | batch | block rows | buffer blocks | peak memory |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for c in _ranked(result):
        for r in (r for r in c.results if r.pattern == pattern):
            bits = "-" if r.mixing is None else f"{r.mixing:.3f}"
            ratio = "-" if r.mixing_ratio is None else f"{r.mixing_ratio:.2f}"
            lines.append(
                f"| {c.name} | {r.reader} | {r.operations} | {r.median * 1e3:.2f} | "
                f"{r.low * 1e3:.2f}-{r.high * 1e3:.2f} | {r.throughput:,.0f} | {bits} | "
                f"{ratio} | {r.label or '-'} | {r.settings['batch_size']:,} | "
                f"{r.settings['block_rows']:,} | {r.settings['buffer']:,} | "
                f"{human_size(r.peak_memory)} |"
            )
    return lines


def _cost_section(result: BenchResult) -> list[str]:
    rows, cols = result.full_shape
    sampled = (
        f" Requests and bytes per operation are measured on the {result.sample:,}-cell sample "
        f"and operations per epoch counted on the full dataset ({rows:,} cells x {cols:,} "
        "genes). Scaled to the full dataset, linearly: "
        + (
            "; ".join(
                f"{label}: requests and bytes per operation x{factor:.2f} ({how})"
                for label, (factor, how) in result.scaled.items()
            )
            or "nothing (every pattern reads as many cells per operation on both)"
        )
        + ". The per-op columns below are the sample's; the per-epoch ones are scaled. "
        "Times are not scaled: scores compare candidates on the same cells."
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
        f"dollars); dollars are the {result.reader} reader's." + sampled,
        "",
        "| pattern | layout | ops per epoch | GET/op | PUT/op | LIST/op | HEAD/op | bytes/op "
        "| scaled | $ per op | $ per epoch |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for pattern in dict.fromkeys(r.pattern for c in result.candidates for r in c.ours()):
        for c in _ranked(result):
            for r in (r for r in c.ours() if r.pattern == pattern):
                per_op = r.per_op()
                lines.append(
                    f"| {pattern} | {c.name} | {r.ops_per_epoch:,} | {per_op['GET']:,.1f} | "
                    f"{per_op['PUT']:,.1f} | {per_op['LIST']:,.1f} | {per_op['HEAD']:,.1f} | "
                    f"{human_size(int(r.bytes_per_op))} | x{r.scale:.2f} | "
                    f"{money(r.dollars_per_op)} | "
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


#: one colour per reader, the same in every panel (matplotlib's tab10); cost and size bars grey
READER_COLOURS = dict(
    zip(READERS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"), strict=True)
)
NEUTRAL = "0.55"
MIB = 2**20


def _log_axis(axis: Any, values: list[float]) -> None:
    """A log axis labelled in plain numbers (1, 2, 5, 10, ...; every decade only when the
    values span more than two), never matplotlib's overlapping minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_xscale("log")
    positive = [v for v in values if v > 0]
    span = max(positive) / min(positive) if positive else 1.0
    axis.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if span > 100 else (1, 2, 5)))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.xaxis.set_minor_formatter(NullFormatter())
    if positive and span < 2:  # a narrow range: room for the 1-2-5 ticks around it
        axis.set_xlim(min(positive) / 1.5, max(positive) * 1.5)


def _plot(result: BenchResult, png: Path, svg: Path) -> None:
    """A grid of panels: the scores with their intervals (what the verdict reads), one panel
    per pattern (median time per operation of every reader, log axis, the rounds' range as
    error bars), cost per epoch and size on disk (MiB); the recommended candidate marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ranked = _ranked(result)
    names = [c.name for c in ranked]
    patterns = list(dict.fromkeys(r.pattern for c in ranked for r in c.results))
    readers = [r for r in READERS if any(x.reader == r for c in ranked for x in c.results)]
    panels = 3 + len(patterns)
    columns = min(3, panels)
    rows = -(-panels // columns)
    height = 0.42 * len(names) + 1.6
    figure, axes = plt.subplots(
        rows, columns, figsize=(5.4 * columns, height * rows + 1.0), squeeze=False
    )
    flat = list(axes.flat)
    winner = names.index(result.winner.name)
    labels = [
        f"> {c.name}" if i == winner else f"{c.name} (excluded)" if c.excluded else c.name
        for i, c in enumerate(ranked)
    ]

    def rows_axis(axis: Any, title: str) -> None:
        axis.set_yticks(range(len(names)), labels, fontsize=8)
        axis.get_yticklabels()[winner].set_fontweight("bold")
        axis.axhspan(winner - 0.45, winner + 0.45, color="gold", alpha=0.25, zorder=0)
        axis.set_ylim(len(names) - 0.5, -0.5)
        axis.set_title(title, fontsize=10)
        axis.grid(axis="x", which="both", alpha=0.25)

    scores = flat[0]
    scores.errorbar(
        [c.score for c in ranked], range(len(names)),
        xerr=[[c.score - c.low for c in ranked], [c.high - c.score for c in ranked]],
        fmt="o", color=READER_COLOURS[result.reader], ecolor="0.3", capsize=3,
    )  # fmt: skip
    _log_axis(scores, [v for c in ranked for v in (c.low, c.high)])
    scores.set_xlabel(f"score, {result.reader} reader (1 = fastest; lower is better)", fontsize=8)
    verdict = result.verdict.kind if result.verdict else "recommended"
    rows_axis(scores, f"score over {result.rounds} rounds: {verdict}")
    offsets = {r: (i - (len(readers) - 1) / 2) * 0.18 for i, r in enumerate(readers)}
    for axis, pattern in zip(flat[1:], patterns, strict=False):
        for reader in readers:
            found = [
                (i, r) for i, c in enumerate(ranked) for r in c.results
                if r.pattern == pattern and r.reader == reader
            ]  # fmt: skip
            if not found:
                continue
            axis.errorbar(
                [r.median * 1e3 for _, r in found], [i + offsets[reader] for i, _ in found],
                xerr=[[(r.median - r.low) * 1e3 for _, r in found],
                      [(r.high - r.median) * 1e3 for _, r in found]],
                fmt="o", markersize=4, color=READER_COLOURS[reader], capsize=2, linewidth=1,
            )  # fmt: skip
        _log_axis(
            axis,
            [v * 1e3 for c in ranked for r in c.results if r.pattern == pattern
             for v in (r.low, r.high)],
        )  # fmt: skip
        axis.set_xlabel("median ms per operation (log)", fontsize=8)
        rows_axis(axis, pattern)
    dollars = flat[1 + len(patterns)]
    dollars.barh(range(len(names)), [c.cost_per_epoch for c in ranked], color=NEUTRAL)
    dollars.set_xlabel(f"{result.prices.currency} per workload epoch", fontsize=8)
    rows_axis(dollars, f"cost per epoch ({result.prices.name})")
    sizes = flat[2 + len(patterns)]
    sizes.barh(range(len(names)), [c.size / MIB for c in ranked], color=NEUTRAL)
    sizes.set_xlabel("MiB on disk", fontsize=8)
    rows_axis(sizes, "size on disk")
    for axis in flat[panels:]:
        axis.set_visible(False)
    handles = [
        Line2D([], [], marker="o", linestyle="", color=READER_COLOURS[r], label=r) for r in readers
    ]
    figure.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(0.005, 0.975), ncols=len(readers),
        fontsize=8, frameon=False,
    )  # fmt: skip
    sample = f", {result.sample:,}-cell sample" if result.sample else ""
    figure.suptitle(
        f"{result.workload.name} on {result.storage.describe()} storage{sample}, --objective "
        f"{result.objective}: {result.winner.name} recommended (marked >, shaded); "
        f"error bars: min-max of {result.rounds} rounds",
        fontsize=10, y=0.995, x=0.01, ha="left",
    )  # fmt: skip
    figure.tight_layout(rect=(0, 0, 1, 0.94))
    figure.savefig(png, dpi=100)
    figure.savefig(svg)
    plt.close(figure)
