"""Training patterns: a loader's epoch replayed through annlayout's loader and annbatch's
``Loader``, timed per round, with how well its batches mix a label.

A round is one epoch of the loader (or the pattern's first ``batches`` batches of it), its
order drawn from the workload's seed and the round. Its time per batch is what scores it;
cells/s is the rows over the time of every round. **Mixing** is the mean entropy (bits) of
the label over each batch's rows, :func:`~annlayout.combine.collection.window_entropy` with
one window per batch (the measure ``concat --shuffle`` reports), against the same for a
uniform permutation of every row's label (:func:`~annlayout.combine.collection.mixing`);
their ratio (1.0: as mixed as a true shuffle) is what a workload's ``min_mixing`` bounds.

Batches differ between candidates (blocks follow each store's chunks), so answers are not
digested as operations are: each row's sum must be the same on every candidate and reader
(the first to read a row sets it), and no row may come twice in a round, nor one be missing
from a whole epoch.
"""

from __future__ import annotations

import itertools
import math
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from annlayout.base.errors import BenchError
from annlayout.bench.measure import REPEATS, PatternResult, open_measured
from annlayout.bench.readers import Epoch, loader_refusal, open_handle, open_loader
from annlayout.bench.stores import Simulation
from annlayout.bench.workloads import Training, pattern_label, training_batch
from annlayout.combine.collection import mixing, window_entropy
from annlayout.combine.concat import ORDER_KEY
from annlayout.reading.loader import BUFFER_BATCHES, UNCHUNKED_BLOCK, whole_chunk_runs


@dataclass(frozen=True)
class Labels:
    """A label per row of the data measured, as small non-negative codes."""

    codes: np.ndarray
    name: str  # what it is, e.g. "obs column 'batch'"

    def uniform(self, window: int, seed: int) -> float:
        """The mean entropy per ``window`` rows under a uniform permutation of every row."""
        return mixing(self.codes, window, seed)[1]


def _codes(values: Any) -> np.ndarray:
    codes = pd.factorize(pd.Series(values), sort=True)[0].astype(np.int64)
    codes[codes < 0] = codes.max(initial=-1) + 1  # missing values: a label of their own
    return codes


def labels(pattern: Training, handle: Any, rows: np.ndarray | None) -> Labels | None:
    """The label of ``pattern`` for the rows measured (``rows`` of the store ``handle``
    opened, or all of them): its obs column, else the input file of each row as concat
    recorded it (cells appended later: a source of their own), else None."""
    picked = slice(None) if rows is None else rows
    if pattern.label is not None:
        if pattern.label not in handle.obs.columns:
            columns = ", ".join(map(str, handle.obs.columns)) or "none"
            raise BenchError(
                f"{pattern_label(pattern)}: label {pattern.label!r} is not an obs column of "
                f"{handle.source} (columns: {columns})"
            )
        values = handle.obs[pattern.label].to_numpy()
        return Labels(_codes(values[picked]), f"obs column {pattern.label!r}")
    order = handle.small_elements().uns.get(ORDER_KEY)
    if not isinstance(order, dict) or "source_row" not in order or "input_n_obs" not in order:
        return None
    starts = np.cumsum(np.asarray(order["input_n_obs"], dtype=np.int64))
    sources = np.searchsorted(starts, np.asarray(order["source_row"]), side="right")
    every = np.full(handle.shape[0], starts.size, dtype=np.int64)  # appended after concat
    every[: min(sources.size, every.size)] = sources[: every.size]
    return Labels(every[picked], "input file (recorded by concat)")


@dataclass
class Setup:
    """What every training replay of a run shares: the labels of each training pattern (by
    its position in the workload; None: no label), and each pattern's row sums as first
    read (NaN: not read yet), which every later read must match."""

    labels: dict[int, Labels | None] = field(default_factory=dict)
    sums: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class LoaderSettings:
    """The loader settings a candidate is measured with; None: the pattern's (block: one
    chunk of the store; buffer: enough blocks for the loader's 8 batches)."""

    block: int | None = None
    buffer: int | None = None

    def label(self) -> str:
        parts = [f"block {self.block}" if self.block else "", f"buffer {self.buffer}" if
                 self.buffer else ""]  # fmt: skip
        return ", ".join(p for p in parts if p) or "pattern's loader settings"


def settings_for(
    pattern: Training, handle: Any, candidate: LoaderSettings | None, n_obs: int
) -> dict[str, Any]:
    """The settings both loaders replay on ``handle``'s store: batch size (capped on small
    data, :func:`~annlayout.bench.workloads.training_batch`), block (None: the loader's
    default, runs of the store's whole chunks, of ``block_rows`` rows on average) and buffer (blocks: the given, else enough for
    the loader's 8 batches)."""
    batch = training_batch(pattern, n_obs)
    block = (candidate and candidate.block) or pattern.block
    rows = block
    if rows is None:
        starts = handle.X.chunk_starts() if handle.X is not None else None
        if starts is None:
            rows = UNCHUNKED_BLOCK
        else:  # the loader's default blocks: runs of whole chunks
            rows = max(1, round(float(np.mean(np.diff(whole_chunk_runs(starts))))))
    buffer = (candidate and candidate.buffer) or pattern.buffer
    buffer = buffer or math.ceil(BUFFER_BATCHES * batch / rows)
    return {"batch_size": batch, "block": block, "block_rows": int(rows), "buffer": int(buffer),
            "rows": n_obs}  # fmt: skip


def whole_batches(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as annbatch's Loader takes them: its buffer (``preload_nchunks``) must
    hold a whole number of batches, so it is rounded up to a multiple of the fewest blocks
    that do (block rows and batch size with few common factors make that many: the report
    shows the buffer each loader read with)."""
    rows, batch = settings["block_rows"], settings["batch_size"]
    unit = batch // math.gcd(rows, batch)
    return {**settings, "buffer": math.ceil(settings["buffer"] / unit) * unit}


@dataclass
class TrainingReplay:
    """A training pattern through one loader on one candidate: the interface of
    :class:`~annlayout.bench.measure.Replay` (a round is one operation: the epoch)."""

    name: str
    pattern: Training
    index: int
    reader: str
    epoch: Epoch
    seed: int
    n_obs: int
    settings: dict[str, Any]
    setup: Setup
    result: PatternResult
    scoring: bool = False  # the reader that scores: the fastest of REPEATS epochs a round
    _round: int = 0
    _latencies: list[float] = field(default_factory=list)
    _codes: list[np.ndarray] = field(default_factory=list)

    def start_round(self, number: int) -> int:
        self._round, self._latencies, self._codes = number, [], []
        return 1

    def time_op(self, position: int) -> None:
        """The round's epoch (the same order each time: the round fixes it), read
        :data:`~annlayout.bench.measure.REPEATS` times by the scoring reader, the fastest
        kept: on a shared machine other work slows an epoch, never speeds it up."""
        if position > 0:
            return
        best = math.inf
        for _ in range(REPEATS if self.scoring else 1):
            latencies, codes, rows = self._epoch()
            if sum(latencies) < best:
                best, self._latencies, self._codes = sum(latencies), latencies, codes
        self.result.rows += rows

    def _epoch(self) -> tuple[list[float], list[np.ndarray], int]:
        """The round's batches, each timed from the end of the one before (the loader's own
        read-ahead runs meanwhile, as it would while a model trains): their times, the
        labels of their rows, and how many rows they held."""
        batches_of = self.epoch(self._round)  # the loader made before the clock starts
        latencies: list[float] = []
        codes: list[np.ndarray] = []
        labels = self.setup.labels.get(self.index)
        sums = self.setup.sums.setdefault(self.index, np.full(self.n_obs, np.nan))
        seen: list[np.ndarray] = []
        iterator = iter(batches_of)
        try:
            batches = itertools.islice(iterator, self.pattern.batches)
            last = time.perf_counter()
            for index, x in batches:
                now = time.perf_counter()
                latencies.append(now - last)
                self._check(index, x, sums)
                seen.append(index)
                if labels is not None:
                    codes.append(labels.codes[index])
                last = time.perf_counter()
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # a bounded round: the loader's read-ahead stops
        return latencies, codes, self._check_round(seen)

    def _check(self, index: np.ndarray, x: Any, sums: np.ndarray) -> None:
        got = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
        known = sums[index]
        fresh = np.isnan(known)
        sums[index[fresh]] = got[fresh]
        if not np.allclose(got[~fresh], known[~fresh], rtol=1e-5, atol=1e-8):
            raise BenchError(
                f"{self.name} ({self.reader} loader) returned rows in "
                f"{self.result.pattern} round {self._round + 1} that differ from the first "
                "read of the same rows"
            )

    def _check_round(self, seen: list[np.ndarray]) -> int:
        """The rows of an epoch, checked: none twice, and every one in a whole epoch."""
        rows = np.concatenate(seen) if seen else np.zeros(0, np.int64)
        whole = self.pattern.batches is None
        if np.unique(rows).size != rows.size or (whole and rows.size != self.n_obs):
            raise BenchError(
                f"{self.name} ({self.reader} loader): round {self._round + 1} of "
                f"{self.result.pattern} read {rows.size:,} rows, {np.unique(rows).size:,} "
                f"distinct, of {self.n_obs:,}: an epoch reads every row once"
            )
        return int(rows.size)

    def end_round(self) -> None:
        """The round's time per batch joins the result's rounds; its mixing too."""
        self.result.latencies += self._latencies
        self.result.rounds.append(sum(self._latencies) / max(1, len(self._latencies)))
        if self._codes:
            window = self.settings["batch_size"]
            self.result.mixing_rounds.append(window_entropy(np.concatenate(self._codes), window))


def prepare_training(
    name: str,
    location: Path | str,
    pattern: Training,
    index: int,
    reader: str,
    seed: int,
    storage: Simulation,
    setup: Setup,
    loader: LoaderSettings | None,
    scoring: bool = True,
) -> TrainingReplay | str:
    """``pattern`` through ``reader``'s loader on the candidate at ``location``, counted on
    one epoch (requests and bytes per batch, peak memory traced) and ready to time; or why
    the loader cannot read it. ``scoring``: the reader scores the candidates."""
    if refusal := loader_refusal(reader, location):
        return refusal
    handle = open_handle(location)
    n_obs = handle.shape[0]
    settings = settings_for(pattern, handle, loader, n_obs)
    if reader == "annbatch":
        settings = whole_batches(settings)
    batch, block, buffer = settings["batch_size"], settings["block"], settings["buffer"]
    if reader == "annbatch":
        block = settings["block_rows"]
    counting, counters = open_measured(location)
    counted = open_loader(reader, counting, batch, block, buffer, seed)
    label = setup.labels.get(index)
    result = PatternResult(pattern_label(pattern), pattern.weight, reader, [], 0, 0, 0, 0)
    result.settings, result.min_mixing = settings, pattern.min_mixing
    if label is not None:
        result.label = label.name
        result.mixing_uniform = label.uniform(batch, seed)
    counters.reset()
    tracemalloc.start()
    try:
        batches = sum(1 for _ in itertools.islice(counted(0), pattern.batches))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    result.requests, result.bytes_read = counters.requests, counters.bytes
    result.puts, result.lists, result.heads = counters.puts, counters.lists, counters.heads
    result.counted, result.peak_memory = batches, peak
    result.copy_bytes = counters.bytes_under("X/csc/") + counters.bytes_under("X/csr/")
    timed: Any = open_measured(location, storage)[0] if storage.active else location
    epoch = open_loader(reader, timed, batch, block, buffer, seed)
    return TrainingReplay(
        name, pattern, index, reader, epoch, seed, n_obs, settings, setup, result, scoring
    )
