"""Benchmark access patterns on candidate layouts and recommend one (``annlayout bench``)."""

from annlayout.base.errors import BenchError
from annlayout.bench.candidates import search_variants
from annlayout.bench.runner import BenchResult, run_bench
from annlayout.bench.stores import Counters, MeasuredStore, Simulation, parse_storage
from annlayout.bench.workloads import Workload, load_workload, shipped_workloads

__all__ = [
    "BenchError",
    "BenchResult",
    "Counters",
    "MeasuredStore",
    "Simulation",
    "Workload",
    "load_workload",
    "parse_storage",
    "run_bench",
    "search_variants",
    "shipped_workloads",
]
