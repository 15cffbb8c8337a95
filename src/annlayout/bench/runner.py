"""Benchmark candidate layouts under a workload and pick the best.

For every candidate: materialize the (sampled) dataset with the streaming apply
(:mod:`~annlayout.bench.candidates`), count every pattern's operations through annlayout's
reader and anndata's lazy readers (:mod:`~annlayout.bench.readers`) on a
:class:`~annlayout.bench.stores.MeasuredStore`, then time them in rounds
(:mod:`~annlayout.bench.measure`), every candidate in every round, the candidates' order
turned each round, so a change in the machine's load falls on all of them. Then price them
(:mod:`~annlayout.bench.cost`: requests by kind and bytes per operation, scaled to the full
dataset, times the operations in one epoch of it), score them with their intervals and give
the verdict (:mod:`~annlayout.bench.score`) under an objective: time, cost or balanced. Each
operation's answer is digested and must be the same for every candidate and every reader, so
a layout bug cannot win.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from annlayout.base.errors import BenchError
from annlayout.bench.candidates import (
    Candidate,
    Progress,
    initial_candidates,
    loader_variants,
    search_variants,
    write_candidate,
)
from annlayout.bench.cost import OBJECTIVES, Prices, load_prices
from annlayout.bench.measure import ROUNDS, Replay, coverage, prepare
from annlayout.bench.readers import LOADERS, READERS, not_installed, reads
from annlayout.bench.score import Verdict, cost, rank_key, score, verdict
from annlayout.bench.stores import Simulation
from annlayout.bench.training import (
    Setup,
    TrainingReplay,
    labels,
    prepare_training,
    whole_batches,
)
from annlayout.bench.workloads import (
    BATCH_SHARE,
    SCALING,
    RandomRows,
    RowSlices,
    Training,
    Workload,
    cells_needed,
    ops_per_epoch,
    pattern_label,
    size_scale,
    training_batch,
)

#: a row pattern on a sample with fewer of a candidate's X chunks reads whole chunks, not the
#: few rows of each it reads at full size
CHUNKS_NEEDED = 8
#: --sample auto measures this many cells at least (or all): fewer make patterns over every
#: cell (gene queries, a category's cells) too cheap to tell layouts apart
AUTO_FLOOR = 10_000


@dataclass
class BenchResult:
    workload: Workload
    storage: Simulation
    source: str
    sample: int | None
    candidates: list[Candidate]
    winner: Candidate
    objective: str = "time"
    prices: Prices = field(default_factory=Prices)
    full_shape: tuple[int, int] = (0, 0)  # the source's, which epochs are counted on
    ops_per_epoch: list[int] = field(default_factory=list)  # per pattern of the workload
    #: readers of READERS that measured nothing, and why (an extra missing, X not sparse)
    skipped_readers: dict[str, str] = field(default_factory=dict)
    verdict: Verdict | None = None
    rounds: int = ROUNDS
    reader: str = "annlayout"  # whose times score the candidates
    #: the data too small for the workload: what is off, and what the figures still say
    warnings: list[str] = field(default_factory=list)
    #: figures scaled from the sample to the full dataset: pattern label -> (factor, how)
    scaled: dict[str, tuple[float, str]] = field(default_factory=dict)
    sample_rows: int = 0  # the cells measured (the full dataset's without a sample)

    @property
    def coverage(self) -> float:
        return coverage(self.rounds)

    def skipped(self) -> list[dict[str, str]]:
        """The readers not measured, as report.json lists them."""
        return [{"reader": r, "reason": why} for r, why in self.skipped_readers.items()]

    def interval_rule(self) -> str:
        return (
            f"min to max of {self.rounds} rounds (each its own draw of every pattern's reads): "
            f"holds the median round {self.coverage:.0%} of the time, whatever the distribution"
        )

    def loader(self) -> list[dict[str, Any]]:
        """The loader settings recommended with the layout, one entry per training pattern:
        what ``annlayout.open(store).batches(...)`` takes (``block`` None: the store's own
        chunks), the buffer scaled to the pattern's own batch size when it was measured
        with smaller batches (it holds as many batches either way), and the mixing."""
        found = []
        patterns = {pattern_label(p): p for p in self.workload.patterns}
        for r in self.winner.ours():
            pattern = patterns.get(r.pattern)
            if not isinstance(pattern, Training) or not r.settings:
                continue
            settings = r.settings
            rows = min(settings["buffer"] * settings["block_rows"], settings["rows"])
            held = rows / settings["batch_size"]  # a buffer never holds more than every row
            buffer = settings["buffer"]
            if settings["batch_size"] != pattern.batch_size:  # as many batches a buffer
                buffer = max(1, math.ceil(held * pattern.batch_size / settings["block_rows"]))
                if r.reader == "annbatch":  # its buffer holds whole batches of the new size
                    buffer = whole_batches(
                        {**settings, "batch_size": pattern.batch_size, "buffer": buffer}
                    )["buffer"]
            found.append({
                "pattern": r.pattern, "reader": r.reader, "batch_size": pattern.batch_size,
                "block": settings["block"], "block_rows": settings["block_rows"],
                "buffer": buffer, "batches_per_buffer": held, "measured": settings,
                "cells_per_s": r.throughput, "mixing": r.mixing_ratio, "label": r.label,
                "min_mixing": r.min_mixing,
            })  # fmt: skip
        return found

    def verdict_summary(self) -> dict[str, Any]:
        """The verdict (report.py adds its reason in words)."""
        return self.verdict.summary() if self.verdict else {"recommended": self.winner.name}

    def summary(self) -> dict[str, Any]:
        return {
            "workload": self.workload.model_dump(mode="json"),
            "storage": self.storage.describe(),
            "source": self.source,
            "sample": self.sample,
            "objective": self.objective,
            "prices": self.prices.model_dump(mode="json"),
            "full_shape": list(self.full_shape),
            "ops_per_epoch": {
                pattern_label(p): n
                for p, n in zip(self.workload.patterns, self.ops_per_epoch, strict=True)
            },
            "winner": self.winner.name,
            "verdict": self.verdict_summary(),
            "reader": self.reader,
            "rounds": self.rounds,
            "interval": self.interval_rule(),
            "sample_rows": self.sample_rows,
            "warnings": self.warnings,
            "scaled": {p: {"factor": f, "how": how} for p, (f, how) in self.scaled.items()},
            "skipped_readers": self.skipped(),
            "loader": self.loader(),
            "candidates": [c.summary() for c in self.candidates],
        }


def run_bench(
    source: str | Path,
    workload: Workload,
    *,
    workdir: Path,
    layouts: list[str | Path] | None = None,
    storage: Simulation | None = None,
    sample: int | str | None = "auto",
    sample_mode: str = "random",
    search: bool = False,
    max_size: float | None = None,
    max_objects: int | None = None,
    progress: Progress | None = None,
    objective: str = "time",
    prices: Prices | str | Path | None = None,
    reader: str = "annlayout",
    rounds: int = ROUNDS,
    readers: tuple[str, ...] = READERS,
) -> BenchResult:
    """Benchmark ``workload`` on the candidates and recommend one under ``objective``:
    ``"time"`` (the score), ``"cost"`` (dollars per workload epoch at ``prices``: a
    :class:`~annlayout.bench.cost.Prices`, a YAML file, or None for S3 Standard) or
    ``"balanced"`` (geometric mean of both, relative to the best), through ``reader`` (one
    of :data:`~annlayout.bench.readers.READERS`), each timing taken in ``rounds`` rounds;
    ``readers``: the readers to measure (each when installed; ``reader`` among them).
    ``sample``: a number of cells, ``"auto"`` (as many as the workload needs, see
    :func:`auto_sample`) or None or ``"all"`` (every cell)."""
    say = progress or (lambda message: None)
    storage = storage or Simulation()
    if objective not in OBJECTIVES:
        raise BenchError(f"objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
    if reader not in READERS:
        raise BenchError(f"--reader {reader!r}: expected one of {', '.join(READERS)}")
    unread = [p for p in workload.patterns if not reads(reader, p.kind)]
    if unread:
        raise BenchError(
            f"--reader {reader}: it does not read {pattern_label(unread[0])} of workload "
            f"{workload.name} (training patterns are read by {' and '.join(LOADERS)}, the "
            "others by every reader but annbatch)"
        )
    if reader in (missing := not_installed()):
        raise BenchError(f"--reader {reader}: {missing[reader]}")
    if reader not in readers:
        raise BenchError(f"--reader {reader}: not among the readers measured")
    if rounds < 2:
        raise BenchError(f"--rounds {rounds}: at least 2 (an interval needs two rounds)")
    if not isinstance(prices, Prices):
        prices = load_prices(prices)
    workdir.mkdir(parents=True, exist_ok=True)
    candidates = initial_candidates(layouts, say)
    if sample == "all":
        sample = None
    if isinstance(sample, str):
        if sample != "auto":
            raise BenchError(f"--sample {sample!r}: expected a number of cells or auto")
        cells: int | None = auto_sample(source, workload, candidates)
    else:
        cells = sample
    data, full_shape, full_obs, rows = _materialize_sample(
        source, workdir, cells, sample_mode, workload.seed, say
    )
    sample_rows = min(cells or full_shape[0], full_shape[0])
    setup = _training_setup(source, workload, rows)
    epochs = [ops_per_epoch(p, full_shape, full_obs) for p in workload.patterns]

    run_storage = storage  # where candidates go: a prefix of this run's own on a URL, so no
    if storage.url:  # store of the user's is overwritten or removed
        import uuid

        run_storage = replace(storage, url=f"{storage.url}/annlayout-bench-{uuid.uuid4().hex[:12]}")
    reference: dict[tuple[int, int, int], str] = {}
    scales = [size_scale(p, full_shape[0], sample_rows) for p in workload.patterns]
    refused: dict[str, str] = {}  # reader -> why it could not read a candidate
    setting = (
        data, workload, run_storage, workdir, reference, setup, refused, rounds, reader, readers,
        say,
    )  # fmt: skip
    try:
        _evaluate(candidates, *setting)
        for candidate in candidates:
            _price(candidate, workload, epochs, scales, prices)
        score(candidates, max_size, max_objects, reader)
        cost(candidates)
        if search:
            best = min(candidates, key=lambda c: rank_key(c, objective))
            variants = [
                Candidate(name=v.name, layout=v, origin="search")
                for v in search_variants(best.layout)
                if v.name not in {c.name for c in candidates}
            ] + [v for v in loader_variants(best) if v.name not in {c.name for c in candidates}]
            _evaluate(variants, *setting)
            for candidate in variants:
                _price(candidate, workload, epochs, scales, prices)
            candidates += variants
            score(candidates, max_size, max_objects, reader)
            cost(candidates)
    finally:
        _remove_remote(run_storage, say)
    chosen = verdict(candidates, objective)
    scaled = {
        pattern_label(p): (factor, SCALING[p.kind])
        for p, factor in zip(workload.patterns, scales, strict=True)
        if factor != 1.0
    }
    return BenchResult(
        workload, storage, str(source), cells if sample_rows < full_shape[0] else None,
        candidates, chosen.winner, objective, prices, full_shape, epochs,
        _skipped_readers(candidates, readers, workload, refused), chosen, rounds, reader,
        _warnings(workload, candidates, sample_rows, full_shape[0]), scaled, sample_rows,
    )  # fmt: skip


def auto_sample(
    source: str | Path, workload: Workload, candidates: list[Candidate], floor: int = AUTO_FLOOR
) -> int:
    """The cells a benchmark of ``workload`` needs: a batch or slice at most
    :data:`~annlayout.bench.workloads.BATCH_SHARE` of them, a full scan's block, (for random
    rows and slices) :data:`CHUNKS_NEEDED` of every candidate's X chunks, as planned for
    ``source``, and ``floor`` at least; never more than the dataset."""
    import annlayout
    from annlayout.planning.plan import make_plan
    from annlayout.planning.survey import survey_store

    handle = annlayout.open(source)
    needed = max(floor, *(cells_needed(p) for p in workload.patterns))
    if any(isinstance(p, RandomRows | RowSlices | Training) for p in workload.patterns):
        survey = survey_store(source)
        for candidate in candidates:
            rows = x_rows_per_chunk(make_plan(candidate.layout, survey))
            if rows:
                # a tenth more: the sample's chunks hold a little more or fewer cells
                needed = max(needed, math.ceil(rows * CHUNKS_NEEDED * 1.1))
    return min(handle.shape[0], needed)


def x_rows_per_chunk(plan: Any) -> float | None:
    """Cells per chunk of X in a plan: chunk elements over nonzeros per cell for sparse X
    (stored by cell), the chunk's rows for dense X; None for a CSC X (every chunk spans all
    cells) or no X."""
    x = next((e for e in plan.elements if e.path == "X"), None)
    if x is None or not x.shape or not x.arrays[0].chunks:
        return None
    chunks = x.arrays[0].chunks
    if x.nnz is None:
        return float(chunks[0])
    if x.orientation == "csc":
        return None
    return chunks[0] / max(x.nnz / max(1, x.shape[0]), 1e-9)


def _warnings(
    workload: Workload, candidates: list[Candidate], rows: int, full_rows: int
) -> list[str]:
    """What is off about measuring ``workload`` on ``rows`` cells (of ``full_rows``), each
    with what the figures are still good for, and what to do about it where anything can."""
    out = []
    for pattern in workload.patterns:
        if isinstance(pattern, Training) and training_batch(pattern, rows) < pattern.batch_size:
            out.append(
                f"{pattern_label(pattern)}: batches of {pattern.batch_size:,} cells are more "
                f"than {BATCH_SHARE:.0%} of the {rows:,} cells measured, so they were measured "
                f"with batches of {training_batch(pattern, rows):,}: the figures compare "
                "layouts and loader settings at that batch size"
                + (
                    f". Give --sample {cells_needed(pattern):,} or more cells"
                    if rows < full_rows
                    else ""
                )
            )
        if isinstance(pattern, RandomRows | RowSlices):
            size = pattern.batch_size if isinstance(pattern, RandomRows) else pattern.length
            if size > BATCH_SHARE * rows:
                out.append(
                    f"{pattern_label(pattern)}: a batch of {size:,} cells is "
                    f"{min(size, rows) / rows:.0%} of the {rows:,} cells measured (at most "
                    f"{BATCH_SHARE:.0%} means what it means on a large dataset): it reads most "
                    "of every layout's chunks, so its times understate what small chunks save; "
                    "they still compare decoding and the per-batch overhead of each reader"
                    + (
                        f". Give --sample {cells_needed(pattern):,} or more cells"
                        if rows < full_rows
                        else f" on a dataset of {full_rows:,} cells, but not on a larger one"
                    )
                )
    rowwise = any(isinstance(p, RandomRows | RowSlices | Training) for p in workload.patterns)
    coarse = [
        c for c in candidates
        if rowwise and c.base is None and c.x_major_per_chunk and rows / c.x_major_per_chunk < CHUNKS_NEEDED
        and "csr" in c.x_orientations[:1]
    ]  # fmt: skip
    if coarse:
        listed = ", ".join(
            f"{c.name} ({rows / (c.x_major_per_chunk or 1):.1f} chunks of "
            f"{c.x_major_per_chunk:,.0f} cells)"
            for c in coarse
        )
        out.append(
            f"the {rows:,} cells measured hold fewer than {CHUNKS_NEEDED} X chunks of {listed}: "
            "their random rows, slices and training blocks read whole chunks; times still rank "
            "those layouts for data this size, not for a larger dataset"
        )
    return out


def _skipped_readers(
    candidates: list[Candidate],
    readers: tuple[str, ...],
    workload: Workload,
    refused: dict[str, str],
) -> dict[str, str]:
    """Every reader asked for that reads some pattern of ``workload`` but measured nothing,
    with the reason: its package is not installed, it refused a store (annbatch and h5ad),
    or (the one other case where a reader opens nothing) X is not a sparse matrix. A reader
    of no pattern of the workload (annbatch without a training pattern) is not a skipped one."""
    relevant = [r for r in readers if any(reads(r, p.kind) for p in workload.patterns)]
    skipped = {r: why for r, why in not_installed().items() if r in relevant}
    measured = {r.reader for c in candidates for r in c.results}
    for reader in relevant:
        if reader not in measured and reader not in skipped:
            skipped[reader] = refused.get(
                reader, f"X is not a sparse matrix: bench measures {reader} on sparse X"
            )
    return skipped


def _training_setup(source: str | Path, workload: Workload, rows: np.ndarray | None) -> Setup:
    """The label of every training pattern for the rows measured (``rows`` of ``source``,
    or all); a ``min_mixing`` with no label to measure it on is refused."""
    setup = Setup()
    trained = [(i, p) for i, p in enumerate(workload.patterns) if isinstance(p, Training)]
    if not trained:
        return setup
    import annlayout

    handle = annlayout.open(source)
    for index, pattern in trained:
        setup.labels[index] = found = labels(pattern, handle, rows)
        if found is None and pattern.min_mixing is not None:
            raise BenchError(
                f"{pattern_label(pattern)}: min_mixing needs a label to measure, and "
                f"{source} records no input files (annlayout concat --shuffle does): give "
                "label: an obs column"
            )
    return setup


def _price(
    candidate: Candidate,
    workload: Workload,
    epochs: list[int],
    scales: list[float],
    prices: Prices,
) -> None:
    """Operations per epoch (of the full dataset), the scale from the sample to it, and
    dollars per operation (scaled) on every result."""
    labels = {
        pattern_label(p): (n, f) for p, n, f in zip(workload.patterns, epochs, scales, strict=True)
    }
    for r in candidate.results:
        r.ops_per_epoch, r.scale = labels[r.pattern]
        per_op = {kind: n * r.scale for kind, n in r.per_op().items()}
        r.dollars_per_op = prices.dollars(
            per_op["GET"], r.bytes_per_op * r.scale, puts=per_op["PUT"], lists=per_op["LIST"],
            heads=per_op["HEAD"],
        )  # fmt: skip


def _materialize_sample(
    source: str | Path, workdir: Path, sample: int | None, mode: str, seed: int, say: Progress
) -> tuple[Path | str, tuple[int, int], Any, np.ndarray | None]:
    """The data to benchmark (``source``, or a sample of it written to ``workdir``), the
    full source's shape and obs (epochs are counted on the full dataset), and the rows of
    the source the sample holds (None: all)."""
    import annlayout

    handle = annlayout.open(source)
    n_obs = handle.shape[0]
    full = (handle.shape[0], handle.shape[1]), handle.obs
    if not sample or sample >= n_obs:
        return source, *full, None
    if mode == "first":
        rows = np.arange(sample)
    else:
        rows = np.sort(np.random.default_rng(seed).choice(n_obs, sample, replace=False))
    say(f"sampling {sample:,} of {n_obs:,} cells ({mode})")
    path = workdir / "sample.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle.to_adata(obs=rows).write_h5ad(path)
    return path, *full, rows


def _evaluate(
    candidates: list[Candidate],
    data: Path | str,
    workload: Workload,
    storage: Simulation,
    workdir: Path,
    reference: dict[tuple[int, int, int], str],
    setup: Setup,
    refused: dict[str, str],
    rounds: int,
    scoring: str,
    readers: tuple[str, ...],
    say: Progress,
) -> None:
    """Write the candidates, count every pattern through every reader on each, then time
    them in ``rounds`` rounds: in each, every pattern and reader on every candidate,
    operation by operation (the same operation on each candidate in turn, the order turned
    each round), so what the machine does meanwhile falls on all of them alike."""
    replays: list[list[Replay | TrainingReplay]] = []
    for candidate in candidates:
        location = write_candidate(candidate, data, storage, workdir, say)
        mine: list[Replay | TrainingReplay] = []
        for index, pattern in enumerate(workload.patterns):
            say(f"counting {candidate.name}: {pattern_label(pattern)}")
            for reader in (r for r in readers if reads(r, pattern.kind)):
                replay: Replay | TrainingReplay | str | None
                if isinstance(pattern, Training):
                    replay = prepare_training(
                        candidate.name, location, pattern, index, reader, workload.seed,
                        storage, setup, candidate.loader, scoring=reader == scoring,
                    )  # fmt: skip
                else:
                    replay = prepare(
                        candidate.name, location, pattern, index, reader, workload, storage,
                        reference, rounds, scoring=reader == scoring,
                    )  # fmt: skip
                if isinstance(replay, str):
                    refused[reader] = replay
                elif replay is not None:
                    mine.append(replay)
                    candidate.results.append(replay.result)
        replays.append(mine)
    groups: dict[tuple[int, str], list[Replay | TrainingReplay]] = {}  # every candidate's
    for mine in replays:
        for replay in mine:
            groups.setdefault((replay.index, replay.reader), []).append(replay)
    for number in range(rounds):
        say(f"timing round {number + 1} of {rounds}")
        for group in groups.values():
            turn = number % len(group)
            ordered = group[turn:] + group[:turn]
            count = max(replay.start_round(number) for replay in ordered)
            for position in range(count):
                for replay in ordered:
                    replay.time_op(position)
            for replay in ordered:
                replay.end_round()


def _remove_remote(storage: Simulation, say: Progress) -> None:
    """Candidates written under --storage s3://... are scratch: this run's prefix is removed.
    A failure to remove is reported, never raised over the run's own result or error."""
    if not storage.url:
        return
    try:
        from annlayout.storage.remote import remove

        remove(storage.url)
    except Exception as error:
        say(f"could not remove {storage.url}: {str(error).splitlines()[0]}")
