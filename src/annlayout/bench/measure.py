"""Replaying a pattern's operations through one reader on one candidate store, in rounds.

Requests (by kind) and bytes are counted once through a
:class:`~annlayout.bench.stores.MeasuredStore`, peak memory traced once; latencies are timed
in rounds (:class:`Replay`), each round its own draw of the pattern's operations, so a
round's median says how fast the layout is on one sample of the reads and the spread of the
rounds says how sure that is. Every answer is digested and must equal the first
candidate's, so a layout bug cannot win.
"""

from __future__ import annotations

import math
import statistics
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from annlayout.base.errors import BenchError
from annlayout.bench.readers import Read, answer_digest, open_handle, open_reader
from annlayout.bench.stores import Counters, MeasuredStore, Simulation
from annlayout.bench.workloads import Operation, Workload, draws, operations, pattern_label

# read_lazy builds and runs a dask graph per selection (seconds per minibatch on 50,000
# cells), so it is timed on LAZY_OPERATIONS operations of each pattern in all (spread over
# the rounds, one at least per round); its answers are checked all the same.
LAZY_OPERATIONS = 4
#: rounds per (pattern, reader, candidate) unless asked otherwise: the range of 5 rounds
#: holds the median round with probability 1 - 2**-4 = 94% (see :func:`coverage`)
ROUNDS = 5
#: the scoring reader's round median is taken over this many operations at least (a
#: pattern's draws are spread over the rounds, but a median of one operation is one stall of
#: the machine away from anything, and the verdict reads every round); the other readers,
#: shown but not scored, take the pattern's own number spread over the rounds
MIN_PER_ROUND = 5
#: the scoring reader reads each operation this many times back to back and keeps the fastest:
#: on a shared machine a read is slowed by whatever else runs, never sped up, so the fastest
#: of three is the layout's and a stall of the machine moves nothing
REPEATS = 3


def coverage(rounds: int) -> float:
    """How often the range (min to max) of ``rounds`` independent rounds holds the median
    round time, whatever its distribution: 1 - 2 x 0.5**rounds."""
    return 1 - 2 * 0.5**rounds


@dataclass
class PatternResult:
    pattern: str
    weight: float
    reader: str  # one of annlayout.bench.readers.READERS
    latencies: list[float]  # every timed operation, all rounds
    requests: int  # GETs, on the counted operations
    bytes_read: int
    rows: int
    peak_memory: int
    puts: int = 0
    lists: int = 0
    heads: int = 0
    counted: int = 0  # operations the requests and bytes were counted on (one round's)
    rounds: list[float] = field(default_factory=list)  # each round's median latency
    copy_bytes: int = 0  # read from a second orientation of X (X/csc or X/csr)
    ops_per_epoch: int = 0  # of the full dataset (workloads.ops_per_epoch), set by the runner
    scale: float = 1.0  # per-op requests and bytes on the full dataset / on the sample, ditto
    dollars_per_op: float = 0.0  # requests and bytes per op (scaled), priced, ditto
    # training patterns (bench.training): the loader settings replayed, the label whose mix
    # is measured, each round's mean entropy of it per batch (bits), a true permutation's
    settings: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    mixing_rounds: list[float] = field(default_factory=list)
    mixing_uniform: float | None = None
    min_mixing: float | None = None

    @property
    def median(self) -> float:
        """The median of the rounds' medians (of every latency before any round ran)."""
        return statistics.median(self.rounds or self.latencies)

    @property
    def low(self) -> float:
        """The fastest round's median: with :attr:`high`, the interval of :func:`coverage`."""
        return min(self.rounds or self.latencies)

    @property
    def high(self) -> float:
        return max(self.rounds or self.latencies)

    @property
    def p95(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]

    @property
    def operations(self) -> int:
        return len(self.latencies)

    @property
    def requests_per_op(self) -> float:
        """Per operation, on the sample: readers are counted on different numbers."""
        return self.requests / max(1, self.counted)

    @property
    def bytes_per_op(self) -> float:
        return self.bytes_read / max(1, self.counted)

    def per_op(self) -> dict[str, float]:
        """Requests per operation by kind (GET, PUT, LIST, HEAD), on the sample."""
        n = max(1, self.counted)
        return {
            "GET": self.requests / n, "PUT": self.puts / n, "LIST": self.lists / n,
            "HEAD": self.heads / n,
        }  # fmt: skip

    @property
    def dollars_per_epoch(self) -> float:
        return self.dollars_per_op * self.ops_per_epoch

    @property
    def throughput(self) -> float:
        """Rows per second (bytes per second for obs columns)."""
        total = sum(self.latencies) or 1e-9
        return (self.rows or self.bytes_read) / total

    @property
    def mixing(self) -> float | None:
        """Mean entropy of the label per batch over the rounds, bits (None: not measured)."""
        if not self.mixing_rounds:
            return None
        return statistics.fmean(self.mixing_rounds)

    @property
    def mixing_ratio(self) -> float | None:
        """:attr:`mixing` over a true permutation's (1.0: as mixed as a shuffle of every
        row; a label with one value is as mixed as it can be)."""
        if self.mixing is None or self.mixing_uniform is None:
            return None
        return self.mixing / self.mixing_uniform if self.mixing_uniform > 0 else 1.0

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(mixing=self.mixing, mixing_ratio=self.mixing_ratio)
        data.update(
            median=self.median, interval=[self.low, self.high], p95=self.p95, throughput=self.throughput,
            operations=self.operations, requests_per_op=self.requests_per_op,
            bytes_per_op=self.bytes_per_op, requests_per_op_by_kind=self.per_op(),
            dollars_per_epoch=self.dollars_per_epoch,
        )  # fmt: skip
        return data


def open_measured(
    location: Path | str, storage: Simulation | None = None
) -> tuple[MeasuredStore, Counters]:
    from zarr.storage import LocalStore

    from annlayout.storage.stores import zarr_store

    counters = Counters()
    if isinstance(location, str):
        inner: Any = zarr_store(location, read_only=True)
    else:
        inner = LocalStore(location, read_only=True)
    return MeasuredStore(inner, counters, storage), counters


@dataclass
class Replay:
    """One pattern through one reader on one candidate: counted once (:func:`prepare`), then
    timed round after round (:meth:`time_round`), the reader kept open between rounds."""

    name: str
    pattern: Any
    index: int  # of the pattern in the workload
    reader: str
    read: Read
    shape: tuple[int, int]
    obs: Any
    seed: int
    rounds: int
    reference: dict[tuple[int, int, int], str]
    result: PatternResult
    scoring: bool = False  # the reader that scores: MIN_PER_ROUND operations, REPEATS each
    _round: int = 0
    _ops: list[Operation] = field(default_factory=list)
    _latencies: list[float] = field(default_factory=list)

    def ops(self, number: int) -> list[Operation]:
        """Round ``number``'s operations: its own draw (seeded by the workload's seed, the
        pattern and the round), the pattern's draws spread over the rounds, at least
        :data:`MIN_PER_ROUND` of them."""
        total = draws(self.pattern)
        per_round = None if total is None else max(MIN_PER_ROUND, math.ceil(total / self.rounds))
        ops = list(
            operations(
                self.pattern, self.shape, self.obs, [self.seed, self.index, number], per_round
            )
        )
        if self.reader == "read_lazy":
            ops = ops[: math.ceil(LAZY_OPERATIONS / self.rounds)]
        return ops

    def start_round(self, number: int) -> int:
        """Draw round ``number``'s operations; returns how many there are."""
        self._round, self._ops, self._latencies = number, self.ops(number), []
        return len(self._ops)

    def time_op(self, position: int) -> None:
        """Time operation ``position`` of the round and check its answer against the first
        candidate's (the runner interleaves candidates operation by operation, so a stall of
        the machine falls on one operation of several candidates, not on one candidate)."""
        if position >= len(self._ops):
            return
        op = self._ops[position]
        fastest = math.inf
        for _ in range(REPEATS if self.scoring else 1):
            started = time.perf_counter()
            answer = self.read(op)
            fastest = min(fastest, time.perf_counter() - started)
        self._latencies.append(fastest)
        self.result.rows += answer.shape[0] if op.column is None else 0
        digest = answer_digest(answer)
        if self.reference.setdefault((self.index, self._round, position), digest) != digest:
            raise BenchError(
                f"{self.name} ({self.reader} reader) answered {self.result.pattern} "
                f"operation {position} of round {self._round + 1} differently from the first "
                "candidate"
            )

    def end_round(self) -> None:
        """The round's median joins the result's rounds."""
        self.result.latencies += self._latencies
        self.result.rounds.append(statistics.median(self._latencies))

    def time_round(self, number: int) -> None:
        """Time round ``number`` on its own: every operation, then the round's median."""
        for position in range(self.start_round(number)):
            self.time_op(position)
        self.end_round()


def prepare(
    name: str,
    location: Path | str,
    pattern: Any,
    index: int,
    reader: str,
    workload: Workload,
    storage: Simulation,
    reference: dict[tuple[int, int, int], str],
    rounds: int = ROUNDS,
    scoring: bool = True,
) -> Replay | None:
    """Pattern ``index`` of ``workload`` through ``reader`` on the candidate ``name`` written
    at ``location``, counted and ready to time; None when the reader cannot read the store
    (or is not installed). ``reference`` holds the first answer's digest of every operation;
    ``scoring``: the reader scores the candidates (:data:`MIN_PER_ROUND` operations a round)."""
    # Requests (by kind), bytes and peak memory come from one untimed pass over round 0's
    # operations through a MeasuredStore that simulates nothing (counts do not depend on
    # it), memory traced (tracemalloc slows Python-heavy readers, so it never runs while
    # timing). The rounds then read the store directly on local disk or a real URL (zarr's
    # fast paths, e.g. the zarrs pipeline, need a plain store), and through a simulating
    # MeasuredStore on simulated object storage.
    counting, counters = open_measured(location)
    read = open_reader(reader, counting)
    if read is None:
        return None
    handle = open_handle(location)
    replay = Replay(
        name, pattern, index, reader, read, handle.shape, handle.obs, workload.seed, rounds,
        reference, PatternResult(pattern_label(pattern), pattern.weight, reader, [], 0, 0, 0, 0),
        scoring,
    )  # fmt: skip
    ops = replay.ops(0)
    counters.reset()
    tracemalloc.start()
    try:
        for op in ops:
            read(op)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    result = replay.result
    result.requests, result.bytes_read = counters.requests, counters.bytes
    result.puts, result.lists, result.heads = counters.puts, counters.lists, counters.heads
    result.counted, result.peak_memory = len(ops), peak
    result.copy_bytes = counters.bytes_under("X/csc/") + counters.bytes_under("X/csr/")
    timed: Any = open_measured(location, storage)[0] if storage.active else location
    timing = open_reader(reader, timed)
    assert timing is not None  # it opened the same store counted
    replay.read = timing
    return replay
