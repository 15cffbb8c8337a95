"""Replaying a pattern's operations through one reader on one candidate store.

Requests (by kind) and bytes are counted through a :class:`~annlayout.bench.stores.MeasuredStore`
(remote costs simulated when asked), latencies timed, peak memory traced; every answer is
digested and must equal the first candidate's, so a layout bug cannot win.
"""

from __future__ import annotations

import math
import statistics
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from annlayout.bench.readers import answer_digest, open_handle, open_reader
from annlayout.bench.stores import Counters, MeasuredStore, Simulation
from annlayout.bench.workloads import Operation, Workload, operations, pattern_label
from annlayout.errors import BenchError

# read_lazy builds and runs a dask graph per selection (seconds per minibatch on 50,000
# cells), so it is timed on the first LAZY_OPERATIONS operations of each pattern only; its
# answers are checked all the same.
LAZY_OPERATIONS = 4


@dataclass
class PatternResult:
    pattern: str
    weight: float
    reader: str  # one of annlayout.bench.readers.READERS
    latencies: list[float]
    requests: int  # GETs
    bytes_read: int
    rows: int
    peak_memory: int
    puts: int = 0
    lists: int = 0
    heads: int = 0
    ops_per_epoch: int = 0  # of the full dataset (workloads.ops_per_epoch), set by the runner
    dollars_per_op: float = 0.0  # requests and bytes per op, priced (cost.Prices), ditto

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p95(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]

    @property
    def operations(self) -> int:
        return len(self.latencies)

    @property
    def requests_per_op(self) -> float:
        """Per operation: readers are timed on different numbers of operations."""
        return self.requests / max(1, self.operations)

    @property
    def bytes_per_op(self) -> float:
        return self.bytes_read / max(1, self.operations)

    def per_op(self) -> dict[str, float]:
        """Requests per operation by kind (GET, PUT, LIST, HEAD)."""
        n = max(1, self.operations)
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

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            median=self.median, p95=self.p95, throughput=self.throughput,
            operations=self.operations, requests_per_op=self.requests_per_op,
            bytes_per_op=self.bytes_per_op, requests_per_op_by_kind=self.per_op(),
            dollars_per_epoch=self.dollars_per_epoch,
        )  # fmt: skip
        return data


def open_measured(location: Path | str, storage: Simulation) -> tuple[MeasuredStore, Counters]:
    from zarr.storage import LocalStore

    from annlayout.stores import zarr_store

    counters = Counters()
    if isinstance(location, str):
        inner: Any = zarr_store(location, read_only=True)
    else:
        inner = LocalStore(location, read_only=True)
    return MeasuredStore(inner, counters, storage), counters


def measure(
    name: str,
    location: Path | str,
    pattern: Any,
    index: int,
    reader: str,
    workload: Workload,
    storage: Simulation,
    reference: dict[tuple[int, int], str],
) -> PatternResult | None:
    """Pattern ``index`` of ``workload`` through ``reader`` on the candidate ``name`` written
    at ``location``; None when the reader cannot read the store (or is not installed).
    ``reference`` holds the first answer's digest of every operation."""
    # Two passes over the same operations. Requests (by kind) and bytes are counted through a
    # MeasuredStore; peak memory is traced (tracemalloc), which slows Python-heavy readers,
    # so it is never traced while timing. On local disk (or a real URL) the timed pass reads
    # the store directly (zarr's fast paths, e.g. the zarrs pipeline, need a plain store)
    # and the second pass counts and traces; on simulated object storage the timed pass is
    # the counted one (the simulation lives in the MeasuredStore) and the second traces.
    store, counters = open_measured(location, storage)
    simulated = storage.active
    ops: list[Operation] = []
    latencies: list[float] = []
    rows = peak = 0
    requests = bytes_read = puts = lists = heads = 0
    for timed_pass in (True, False):
        counted = simulated == timed_pass
        source = store if counted else location
        read = open_reader(reader, source)
        if read is None:
            return None
        if not ops:
            handle = open_handle(source)
            ops = list(operations(pattern, handle.shape, handle.obs, workload.seed + index))
            if reader == "read_lazy":
                ops = ops[:LAZY_OPERATIONS]
        counters.reset()
        if not timed_pass:
            tracemalloc.start()
        try:
            for number, op in enumerate(ops):
                started = time.perf_counter()
                answer = read(op)
                if not timed_pass:
                    continue
                latencies.append(time.perf_counter() - started)
                rows += answer.shape[0] if op.column is None else 0
                digest = answer_digest(answer)
                if reference.setdefault((index, number), digest) != digest:
                    raise BenchError(
                        f"{name} ({reader} reader) answered {pattern_label(pattern)} "
                        f"operation {number} differently from the first candidate"
                    )
            if not timed_pass:
                _, peak = tracemalloc.get_traced_memory()
        finally:
            if not timed_pass:
                tracemalloc.stop()
        if counted:
            requests, bytes_read = counters.requests, counters.bytes
            puts, lists, heads = counters.puts, counters.lists, counters.heads
    return PatternResult(
        pattern=pattern_label(pattern),
        weight=pattern.weight,
        reader=reader,
        latencies=latencies,
        requests=requests,
        bytes_read=bytes_read,
        rows=rows,
        peak_memory=peak,
        puts=puts,
        lists=lists,
        heads=heads,
    )
