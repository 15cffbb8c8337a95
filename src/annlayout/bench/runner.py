"""Benchmark candidate layouts under a workload and pick the best.

For every candidate: materialize the (sampled) dataset with the streaming apply
(:mod:`~annlayout.bench.candidates`), then replay every pattern's operations through
annlayout's reader and anndata's lazy readers (:mod:`~annlayout.bench.readers`) on a
:class:`~annlayout.bench.stores.MeasuredStore` (:mod:`~annlayout.bench.measure`: requests and
bytes counted, remote costs simulated when asked), and score them
(:mod:`~annlayout.bench.score`). Each operation's answer is digested and must be the same for
every candidate and every reader, so a layout bug cannot win.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
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
from annlayout.bench.measure import measure
from annlayout.bench.readers import READERS
from annlayout.bench.score import recommend, score
from annlayout.bench.stores import Simulation
from annlayout.bench.workloads import Workload, pattern_label
from annlayout.optional import requirement


@dataclass
class BenchResult:
    workload: Workload
    storage: Simulation
    source: str
    sample: int | None
    candidates: list[Candidate]
    winner: Candidate

    def summary(self) -> dict[str, Any]:
        return {
            "workload": self.workload.model_dump(mode="json"),
            "storage": self.storage.describe(),
            "source": self.source,
            "sample": self.sample,
            "winner": self.winner.name,
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
) -> BenchResult:
    say = progress or (lambda message: None)
    storage = storage or Simulation()
    workdir.mkdir(parents=True, exist_ok=True)
    data = _materialize_sample(source, workdir, sample, sample_mode, workload.seed, say)
    candidates = initial_candidates(layouts, say)

    run_storage = storage  # where candidates go: a prefix of this run's own on a URL, so no
    if storage.url:  # store of the user's is overwritten or removed
        import uuid

        run_storage = replace(storage, url=f"{storage.url}/annlayout-bench-{uuid.uuid4().hex[:12]}")
    lazy_missing = requirement("bench", "measuring anndata's read_lazy")
    if lazy_missing:
        say(f"{lazy_missing}; skipping that reader")
    reference: dict[tuple[int, int], str] = {}
    try:
        for candidate in candidates:
            _evaluate(candidate, data, workload, run_storage, workdir, reference, say)
        score(candidates, max_size, max_objects)
        if search:
            best = min(candidates, key=lambda c: c.score)
            variants = [
                v
                for v in search_variants(best.layout)
                if v.name not in {c.name for c in candidates}
            ]
            for layout in variants:
                candidate = Candidate(name=layout.name, layout=layout, origin="search")
                _evaluate(candidate, data, workload, run_storage, workdir, reference, say)
                candidates.append(candidate)
            score(candidates, max_size, max_objects)
    finally:
        _remove_remote(run_storage, say)
    winner = recommend(candidates)
    return BenchResult(workload, storage, str(source), sample, candidates, winner)


def _materialize_sample(
    source: str | Path, workdir: Path, sample: int | None, mode: str, seed: int, say: Progress
) -> Path | str:
    import annlayout

    handle = annlayout.open(source)
    n_obs = handle.shape[0]
    if not sample or sample >= n_obs:
        return source
    if mode == "first":
        rows = np.arange(sample)
    else:
        rows = np.sort(np.random.default_rng(seed).choice(n_obs, sample, replace=False))
    say(f"sampling {sample:,} of {n_obs:,} cells ({mode})")
    path = workdir / "sample.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle.to_adata(obs=rows).write_h5ad(path)
    return path


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
        say(f"{candidate.name}: {pattern_label(pattern)}")
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
