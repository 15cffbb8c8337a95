"""Benchmark candidate layouts under a workload and pick the best.

For every candidate: materialize the (sampled) dataset with the streaming apply, then replay
every pattern's operations through annlayout's reader and through anndata's
``sparse_dataset``, on a :class:`~annlayout.bench.stores.MeasuredStore` (requests and bytes
counted, remote costs simulated when asked). Each operation's answer is digested and must be
the same for every candidate and both readers, so a layout bug cannot win.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
import tracemalloc
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from annlayout.bench.stores import Counters, MeasuredStore, Simulation
from annlayout.bench.workloads import Operation, Workload, operations, pattern_label
from annlayout.encodings import SPARSE_ENCODINGS, encoding_of
from annlayout.errors import BenchError
from annlayout.optional import requirement
from annlayout.plan import make_plan
from annlayout.spec import ChunkSpec, Layout, Zstd, load_layout, shipped_layouts
from annlayout.stores import filesystem, footprint
from annlayout.survey import survey_store

Progress = Callable[[str], None]

# annlayout's reader and anndata's two lazy readers. read_lazy builds and runs a dask graph
# per selection (seconds per minibatch on 50,000 cells), so it is timed on the first
# LAZY_OPERATIONS operations of each pattern only; its answers are checked all the same.
READERS = ("annlayout", "sparse_dataset", "read_lazy")
LAZY_OPERATIONS = 4


@dataclass
class PatternResult:
    pattern: str
    weight: float
    reader: str  # one of READERS
    latencies: list[float]
    requests: int
    bytes_read: int
    rows: int
    peak_memory: int

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
            bytes_per_op=self.bytes_per_op,
        )  # fmt: skip
        return data


@dataclass
class Candidate:
    name: str
    layout: Layout
    origin: str  # "shipped", "given" or "search"
    location: Path | str | None = None  # a local path, or a URL on --storage s3://...
    write_seconds: float = 0.0
    size: int = 0
    objects: int = 0
    x_major_per_chunk: float | None = None
    x_orientations: list[str] = field(default_factory=list)
    results: list[PatternResult] = field(default_factory=list)
    score: float = math.inf
    excluded: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "origin": self.origin,
            "write_seconds": self.write_seconds,
            "size": self.size,
            "objects": self.objects,
            "x_major_per_chunk": self.x_major_per_chunk,
            "x_orientations": self.x_orientations,
            "score": self.score,
            "excluded": self.excluded,
            "patterns": [r.summary() for r in self.results],
        }


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

    candidates = [
        Candidate(
            name=Path(str(n)).stem, layout=load_layout(n), origin="given" if layouts else "shipped"
        )
        for n in (layouts or list(shipped_layouts()))
    ]
    skipped = [c.name for c in candidates if c.layout.target.format != "zarr"]
    candidates = [c for c in candidates if c.layout.target.format == "zarr"]
    if skipped:
        say(f"skipping {', '.join(skipped)}: h5ad stores cannot be measured per request")
    if not candidates:
        raise BenchError("no zarr layout among the candidates")

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
        _score(candidates, max_size, max_objects)
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
            _score(candidates, max_size, max_objects)
    finally:
        _remove_remote(run_storage, say)
    eligible = [c for c in candidates if c.excluded is None]
    if not eligible:
        raise BenchError("every candidate breaks --max-size or --max-objects")
    winner = min(eligible, key=lambda c: (round(c.score, 2), c.size, c.name))
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
    import annlayout

    candidate.location = (
        f"{storage.url}/{candidate.name}.zarr"
        if storage.url
        else workdir / f"{candidate.name}.zarr"
    )
    say(f"writing {candidate.name}")
    started = time.perf_counter()
    annlayout.apply(candidate.layout, data, candidate.location, overwrite=True, verify=False)
    candidate.write_seconds = time.perf_counter() - started
    candidate.size, candidate.objects = footprint(candidate.location)
    x = make_plan(candidate.layout, survey_store(candidate.location)).elements
    x_plan = next((e for e in x if e.path == "X"), None)
    if x_plan is not None and x_plan.shape:
        candidate.x_orientations = [x_plan.orientation or "dense", *x_plan.copies]
        if x_plan.nnz is not None:  # sparse: chunk elements / nonzeros per major slice
            per_major = x_plan.nnz / max(1, x_plan.shape[x_plan.orientation == "csc"])
            candidate.x_major_per_chunk = x_plan.arrays[0].chunks[0] / max(per_major, 1e-9)
        else:
            candidate.x_major_per_chunk = float(x_plan.arrays[0].chunks[0])

    for index, pattern in enumerate(workload.patterns):
        say(f"{candidate.name}: {pattern_label(pattern)}")
        for reader in READERS:
            result = _measure(candidate, pattern, index, reader, workload, storage, reference)
            if result is not None:
                candidate.results.append(result)


def _open(candidate: Candidate, storage: Simulation) -> tuple[MeasuredStore, Counters]:
    from zarr.storage import FsspecStore, LocalStore

    counters = Counters()
    if isinstance(candidate.location, str):
        inner: Any = FsspecStore.from_url(candidate.location, read_only=True)
    else:
        inner = LocalStore(candidate.location, read_only=True)
    return MeasuredStore(inner, counters, storage), counters


def _remove_remote(storage: Simulation, say: Progress) -> None:
    """Candidates written under --storage s3://... are scratch: this run's prefix is removed.
    A failure to remove is reported, never raised over the run's own result or error."""
    if not storage.url:
        return
    try:
        fs = filesystem(storage.url)
        if fs.exists(storage.url):
            fs.rm(storage.url, recursive=True)
    except Exception as error:
        say(f"could not remove {storage.url}: {str(error).splitlines()[0]}")


def _measure(
    candidate: Candidate,
    pattern: Any,
    index: int,
    reader: str,
    workload: Workload,
    storage: Simulation,
    reference: dict[tuple[int, int], str],
) -> PatternResult | None:
    # Two passes over the same operations. Requests and bytes are counted through a
    # MeasuredStore; peak memory is traced (tracemalloc), which slows Python-heavy readers,
    # so it is never traced while timing. On local disk (or a real URL) the timed pass reads
    # the store directly (zarr's fast paths, e.g. the zarrs pipeline, need a plain store)
    # and the second pass counts and traces; on simulated object storage the timed pass is
    # the counted one (the simulation lives in the MeasuredStore) and the second traces.
    store, counters = _open(candidate, storage)
    simulated = storage.active
    ops: list[Operation] = []
    latencies: list[float] = []
    rows = peak = 0
    requests = bytes_read = 0
    for timed_pass in (True, False):
        counted = simulated == timed_pass
        source = store if counted else candidate.location
        read = _reader(reader, source)
        if read is None:
            return None
        if not ops:
            handle = _handle(source)
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
                digest = _digest(answer)
                if reference.setdefault((index, number), digest) != digest:
                    raise BenchError(
                        f"{candidate.name} ({reader} reader) answered {pattern_label(pattern)} "
                        f"operation {number} differently from the first candidate"
                    )
            if not timed_pass:
                _, peak = tracemalloc.get_traced_memory()
        finally:
            if not timed_pass:
                tracemalloc.stop()
        if counted:
            requests, bytes_read = counters.requests, counters.bytes
    return PatternResult(
        pattern=pattern_label(pattern),
        weight=pattern.weight,
        reader=reader,
        latencies=latencies,
        requests=requests,
        bytes_read=bytes_read,
        rows=rows,
        peak_memory=peak,
    )


def _handle(source: Any) -> Any:
    import annlayout

    return annlayout.open(source)


def _reader(kind: str, source: Any) -> Callable[[Operation], Any] | None:
    """A reader opened once, with what it reads once per handle (indexes, indptrs) done."""
    if kind == "sparse_dataset":
        return _sparse_dataset_reader(source)
    if kind == "read_lazy":
        return _read_lazy_reader(source)
    handle = _handle(source)
    if handle.X is not None and handle.X.encoding.endswith("_matrix"):
        handle.X.warm()  # indptrs and shard indexes: read once per open handle, untimed
    return _annlayout_reader(handle)


def _annlayout_reader(handle: Any) -> Callable[[Operation], Any]:
    def read(op: Operation) -> Any:
        if op.column is not None:
            return handle.obs[op.column].to_numpy()
        return handle.X[op.rows, op.cols]

    return read


def _zarr_group(store: Any) -> Any:
    import zarr

    if isinstance(store, Path | str):
        return zarr.open_group(str(store), mode="r")
    return zarr.open_group(store=store, mode="r")


def _sorted_rows(rows: Any, read: Callable[[Any], Any]) -> sp.csr_matrix:
    """anndata's readers want sorted rows: read sorted, then put them back in order."""
    if not isinstance(rows, np.ndarray):
        return sp.csr_matrix(read(rows))
    order = np.argsort(rows, kind="stable")
    return sp.csr_matrix(read(rows[order]))[np.argsort(order)]


def _sparse_dataset_reader(store: Any) -> Callable[[Operation], Any] | None:
    import anndata as ad
    from anndata.io import read_elem

    group = _zarr_group(store)
    if encoding_of(group["X"]) not in SPARSE_ENCODINGS:
        return None
    matrix = ad.io.sparse_dataset(group["X"])

    def read(op: Operation) -> Any:
        if op.column is not None:
            return np.asarray(read_elem(group["obs"][op.column]))
        if isinstance(op.rows, np.ndarray) or isinstance(op.cols, slice):
            return _sorted_rows(op.rows, lambda rows: matrix[rows])[:, op.cols]
        return sp.csr_matrix(matrix[op.rows, op.cols])

    return read


def _read_lazy_reader(store: Any) -> Callable[[Operation], Any] | None:
    """anndata's read_lazy; None (not measured) when dask or xarray is not installed."""
    if requirement("bench", "read_lazy"):
        return None
    import anndata as ad

    group = _zarr_group(store)
    if encoding_of(group["X"]) not in SPARSE_ENCODINGS:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lazy = ad.experimental.read_lazy(group)

    def read(op: Operation) -> Any:
        if op.column is not None:
            return np.asarray(lazy.obs[op.column])
        block = _sorted_rows(op.rows, lambda rows: lazy.X[rows].compute())
        return block[:, op.cols]

    return read


def _digest(answer: Any) -> str:
    digest = hashlib.sha256()
    if sp.issparse(answer):
        matrix = sp.csr_matrix(answer)
        matrix.sum_duplicates()
        matrix.sort_indices()
        digest.update(str(matrix.shape).encode())
        for part in (matrix.indptr, matrix.indices):
            digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(matrix.data, dtype=np.float64).tobytes())
    else:
        values = np.asarray(answer)
        digest.update(str(values.shape).encode())
        digest.update(
            repr(values.astype(str).tolist()).encode()
            if values.dtype.kind in "OUT"
            else np.ascontiguousarray(values).tobytes()
        )
    return digest.hexdigest()


def _score(candidates: list[Candidate], max_size: float | None, max_objects: int | None) -> None:
    """Weighted mean, over patterns, of each candidate's median latency relative to the best."""
    ours = {
        c.name: {r.pattern: r for r in c.results if r.reader == "annlayout"} for c in candidates
    }
    patterns = {r.pattern: r.weight for c in candidates for r in c.results}
    best = {p: min(ours[c.name][p].median for c in candidates) for p in patterns}
    total = sum(patterns.values())
    smallest = min(c.size for c in candidates)
    for candidate in candidates:
        candidate.score = (
            sum(
                w * ours[candidate.name][p].median / max(best[p], 1e-9) for p, w in patterns.items()
            )
            / total
        )
        candidate.excluded = None
        if max_size is not None and candidate.size > max_size * smallest:
            candidate.excluded = f"size {candidate.size / smallest:.2f}x the smallest > {max_size}x"
        elif max_objects is not None and candidate.objects > max_objects:
            candidate.excluded = f"{candidate.objects:,} objects > {max_objects:,}"


def search_variants(layout: Layout) -> list[Layout]:
    """Layouts around ``layout``: its X rule with chunks /4 and x4, another codec, the other
    orientation count."""
    index = next(
        (i for i, r in enumerate(layout.rules) if r.match.matches("X", "csr_matrix")), None
    )
    if index is None:
        return []
    rule = layout.rules[index]
    _, resolved = layout.rule_for("X", "csr_matrix")
    variants: list[tuple[str, dict[str, Any]]] = []
    chunks = resolved.chunks
    for factor, label in ((0.25, "chunks-div4"), (4, "chunks-x4")):
        if chunks.major or chunks.rows:
            new = ChunkSpec(major=max(1, int((chunks.major or chunks.rows) * factor)))
        elif chunks.bytes:
            new = ChunkSpec(bytes=max(1 << 12, int(chunks.bytes * factor)))
        elif chunks.elements:
            new = ChunkSpec(elements=max(1, int(chunks.elements * factor)))
        else:
            continue
        variants.append((label, {"chunks": new}))
    is_zstd = any(isinstance(c, Zstd) for c in resolved.codecs)
    other = (
        [{"name": "blosc", "cname": "lz4", "clevel": 5, "shuffle": "shuffle"}]
        if is_zstd
        else [{"name": "zstd", "level": 3}]
    )
    variants.append(("lz4" if is_zstd else "zstd", {"codecs": other}))
    orientations = list(resolved.orientations or ["csr"])
    toggled = ["csr"] if len(orientations) > 1 else ["csr", "csc"]
    variants.append(("dual" if len(toggled) > 1 else "single", {"orientations": toggled}))
    out = []
    for label, change in variants:
        rules = [r.model_dump(mode="json", exclude_none=True, by_alias=True) for r in layout.rules]
        rules[index] = {**rule.model_dump(mode="json", exclude_none=True, by_alias=True)}
        for key, value in change.items():
            rules[index][key] = (
                value.model_dump(mode="json") if hasattr(value, "model_dump") else value
            )
        data = layout.canonical()
        data.update(name=f"{layout.name}-{label}", rules=rules,
                    description=f"{layout.name} with X {label.replace('-', ' ')} (annlayout bench --search)")  # fmt: skip
        out.append(Layout.model_validate(data))
    return out
