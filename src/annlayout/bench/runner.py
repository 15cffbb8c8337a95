"""Benchmark candidate layouts under a workload and pick the best.

For every candidate: materialize the (sampled) dataset with the streaming apply
(:mod:`~annlayout.bench.candidates`), then replay every pattern's operations through
annlayout's reader and anndata's lazy readers (:mod:`~annlayout.bench.readers`) on a
:class:`~annlayout.bench.stores.MeasuredStore` (:mod:`~annlayout.bench.measure`: requests and
bytes counted, remote costs simulated when asked), price them (:mod:`~annlayout.bench.cost`:
requests by kind and bytes per operation, times the operations in one epoch of the full
dataset), and score them (:mod:`~annlayout.bench.score`) under an objective: time, cost or
balanced. Each operation's answer is digested and must be the same for
every candidate and every reader, so a layout bug cannot win.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from annlayout.bench.candidates import (
    Candidate,
    Progress,
    initial_candidates,
    search_variants,
    write_candidate,
)
from annlayout.bench.cost import OBJECTIVES, Prices, load_prices
from annlayout.bench.measure import measure
from annlayout.bench.readers import READERS, not_installed
from annlayout.bench.score import cost, rank_key, recommend, score
from annlayout.bench.stores import Simulation
from annlayout.bench.workloads import Workload, ops_per_epoch, pattern_label
from annlayout.errors import BenchError


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

    def skipped(self) -> list[dict[str, str]]:
        """The readers not measured, as report.json lists them."""
        return [{"reader": r, "reason": why} for r, why in self.skipped_readers.items()]

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
            "skipped_readers": self.skipped(),
            "candidates": [c.summary() for c in self.candidates],
        }


def run_bench(
    source: str | Path,
    workload: Workload,
    *,
    workdir: Path,
    layouts: list[str | Path] | None = None,
    storage: Simulation | None = None,
    sample: int | None = None,
    sample_mode: str = "random",
    search: bool = False,
    max_size: float | None = None,
    max_objects: int | None = None,
    progress: Progress | None = None,
    objective: str = "time",
    prices: Prices | str | Path | None = None,
) -> BenchResult:
    """Benchmark ``workload`` on the candidates and recommend one under ``objective``:
    ``"time"`` (the score), ``"cost"`` (dollars per workload epoch at ``prices``: a
    :class:`~annlayout.bench.cost.Prices`, a YAML file, or None for S3 Standard) or
    ``"balanced"`` (geometric mean of both, relative to the best)."""
    say = progress or (lambda message: None)
    storage = storage or Simulation()
    if objective not in OBJECTIVES:
        raise BenchError(f"objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
    if not isinstance(prices, Prices):
        prices = load_prices(prices)
    workdir.mkdir(parents=True, exist_ok=True)
    data, full_shape, full_obs = _materialize_sample(
        source, workdir, sample, sample_mode, workload.seed, say
    )
    epochs = [ops_per_epoch(p, full_shape, full_obs) for p in workload.patterns]
    candidates = initial_candidates(layouts, say)

    run_storage = storage  # where candidates go: a prefix of this run's own on a URL, so no
    if storage.url:  # store of the user's is overwritten or removed
        import uuid

        run_storage = replace(storage, url=f"{storage.url}/annlayout-bench-{uuid.uuid4().hex[:12]}")
    reference: dict[tuple[int, int], str] = {}
    try:
        for candidate in candidates:
            _evaluate(candidate, data, workload, run_storage, workdir, reference, say)
            _price(candidate, workload, epochs, prices)
        score(candidates, max_size, max_objects)
        cost(candidates)
        if search:
            best = min(candidates, key=lambda c: rank_key(c, objective))
            variants = [
                v
                for v in search_variants(best.layout)
                if v.name not in {c.name for c in candidates}
            ]
            for layout in variants:
                candidate = Candidate(name=layout.name, layout=layout, origin="search")
                _evaluate(candidate, data, workload, run_storage, workdir, reference, say)
                _price(candidate, workload, epochs, prices)
                candidates.append(candidate)
            score(candidates, max_size, max_objects)
            cost(candidates)
    finally:
        _remove_remote(run_storage, say)
    winner = recommend(candidates, objective)
    return BenchResult(
        workload, storage, str(source), sample, candidates, winner, objective, prices,
        full_shape, epochs, _skipped_readers(candidates),
    )  # fmt: skip


def _skipped_readers(candidates: list[Candidate]) -> dict[str, str]:
    """Every reader that measured nothing, with the reason: its extra is not installed, or
    (the one other case where a reader opens nothing) X is not a sparse matrix."""
    skipped = not_installed()
    measured = {r.reader for c in candidates for r in c.results}
    for reader in READERS:
        if reader not in measured and reader not in skipped:
            skipped[reader] = f"X is not a sparse matrix: bench measures {reader} on sparse X"
    return skipped


def _price(candidate: Candidate, workload: Workload, epochs: list[int], prices: Prices) -> None:
    """Operations per epoch (of the full dataset) and dollars per operation on every result."""
    labels = {pattern_label(p): n for p, n in zip(workload.patterns, epochs, strict=True)}
    for r in candidate.results:
        r.ops_per_epoch = labels[r.pattern]
        n = max(1, r.operations)
        r.dollars_per_op = prices.dollars(
            r.requests / n, r.bytes_read / n, puts=r.puts / n, lists=r.lists / n, heads=r.heads / n
        )


def _materialize_sample(
    source: str | Path, workdir: Path, sample: int | None, mode: str, seed: int, say: Progress
) -> tuple[Path | str, tuple[int, int], Any]:
    """The data to benchmark (``source``, or a sample of it written to ``workdir``), and the
    full source's shape and obs (epochs are counted on the full dataset)."""
    import annlayout

    handle = annlayout.open(source)
    n_obs = handle.shape[0]
    full = (handle.shape[0], handle.shape[1]), handle.obs
    if not sample or sample >= n_obs:
        return source, *full
    if mode == "first":
        rows = np.arange(sample)
    else:
        rows = np.sort(np.random.default_rng(seed).choice(n_obs, sample, replace=False))
    say(f"sampling {sample:,} of {n_obs:,} cells ({mode})")
    path = workdir / "sample.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle.to_adata(obs=rows).write_h5ad(path)
    return path, *full


def _evaluate(
    candidate: Candidate,
    data: Path | str,
    workload: Workload,
    storage: Simulation,
    workdir: Path,
    reference: dict[tuple[int, int], str],
    say: Progress,
) -> None:
    """Write the candidate, then measure every pattern through every reader."""
    location = write_candidate(candidate, data, storage, workdir, say)
    for index, pattern in enumerate(workload.patterns):
        say(f"measuring {candidate.name}: {pattern_label(pattern)}")
        for reader in READERS:
            result = measure(
                candidate.name, location, pattern, index, reader, workload, storage, reference
            )
            if result is not None:
                candidate.results.append(result)


def _remove_remote(storage: Simulation, say: Progress) -> None:
    """Candidates written under --storage s3://... are scratch: this run's prefix is removed.
    A failure to remove is reported, never raised over the run's own result or error."""
    if not storage.url:
        return
    try:
        from annlayout.remote import remove

        remove(storage.url)
    except Exception as error:
        say(f"could not remove {storage.url}: {str(error).splitlines()[0]}")
