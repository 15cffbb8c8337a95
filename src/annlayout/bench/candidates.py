"""Candidate layouts: the shipped or given ones, the variants ``--search`` adds around the
best, and each candidate's store written (materialized) with the streaming apply."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annlayout.base.errors import BenchError
from annlayout.bench.measure import PatternResult
from annlayout.bench.stores import Simulation
from annlayout.bench.training import LoaderSettings
from annlayout.layout.spec import ChunkSpec, Layout, Zstd, load_layout, shipped_layouts
from annlayout.planning.plan import make_plan
from annlayout.planning.survey import survey_store
from annlayout.storage.stores import footprint

Progress = Callable[[str], None]


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
    reader: str = "annlayout"  # whose results score and cost it (bench --reader)
    score: float = math.inf  # the median of its round scores (score.score)
    low: float = math.inf  # the range of its round scores
    high: float = math.inf
    rounds: list[float] = field(default_factory=list)  # its score in each round
    cost_per_epoch: float = math.inf  # dollars per workload epoch, its reader's
    balanced: float = math.inf  # score.rank: sqrt(score / best x cost / best)
    balanced_interval: tuple[float, float] = (math.inf, math.inf)
    excluded: str | None = None
    #: the loader settings its training patterns are read with (None: the patterns'), and the
    #: candidate whose store it reads (a loader variant of --search: same layout, same store)
    loader: LoaderSettings | None = None
    base: Candidate | None = None

    def loader_settings(self) -> dict[str, dict[str, Any]]:
        """Per training pattern, the loader settings its reader replayed (see
        :func:`~annlayout.bench.training.settings_for`)."""
        return {r.pattern: r.settings for r in self.ours() if r.settings}

    def ours(self) -> list[PatternResult]:
        """The results through its reader (what scores and costs are made of)."""
        return [r for r in self.results if r.reader == self.reader]

    def requests_per_epoch(self) -> dict[str, float]:
        """Requests by kind per workload epoch of the full dataset (per-op counts scaled
        from the sample, :attr:`PatternResult.scale`), its reader's."""
        totals = {"GET": 0.0, "PUT": 0.0, "LIST": 0.0, "HEAD": 0.0}
        for r in self.ours():
            for kind, n in r.per_op().items():
                totals[kind] += n * r.scale * r.ops_per_epoch
        return totals

    def bytes_per_epoch(self) -> float:
        return sum(r.bytes_per_op * r.scale * r.ops_per_epoch for r in self.ours())

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "origin": self.origin,
            "write_seconds": self.write_seconds,
            "size": self.size,
            "objects": self.objects,
            "x_major_per_chunk": self.x_major_per_chunk,
            "x_orientations": self.x_orientations,
            "reader": self.reader,
            "score": self.score,
            "score_interval": [self.low, self.high],
            "round_scores": self.rounds,
            "cost_per_epoch": self.cost_per_epoch,
            "requests_per_epoch": self.requests_per_epoch(),
            "bytes_per_epoch": self.bytes_per_epoch(),
            "balanced": self.balanced,
            "balanced_interval": list(self.balanced_interval),
            "excluded": self.excluded,
            "loader": self.loader_settings(),
            "patterns": [r.summary() for r in self.results],
        }


def initial_candidates(layouts: list[str | Path] | None, say: Progress) -> list[Candidate]:
    """The given layouts, or else the shipped ones; zarr targets only (an h5ad store cannot
    be measured per request)."""
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
    return candidates


def write_candidate(
    candidate: Candidate, data: Path | str, storage: Simulation, workdir: Path, say: Progress
) -> Path | str:
    """Write ``data`` with the candidate's layout (under ``storage.url`` when set, else in
    ``workdir``) and note its location, write time, footprint and X's orientations and
    chunking. Returns the location."""
    import annlayout

    if candidate.base is not None:  # a loader variant reads its base's store
        base = candidate.base
        candidate.location, candidate.write_seconds = base.location, base.write_seconds
        candidate.size, candidate.objects = base.size, base.objects
        candidate.x_major_per_chunk = base.x_major_per_chunk
        candidate.x_orientations = list(base.x_orientations)
        assert base.location is not None  # evaluated before its variants
        return base.location
    location: Path | str = (
        f"{storage.url}/{candidate.name}.zarr"
        if storage.url
        else workdir / f"{candidate.name}.zarr"
    )
    candidate.location = location
    say(f"writing {candidate.name}")
    started = time.perf_counter()
    annlayout.apply(candidate.layout, data, location, overwrite=True, verify=False)
    candidate.write_seconds = time.perf_counter() - started
    candidate.size, candidate.objects = footprint(location)
    x = make_plan(candidate.layout, survey_store(location)).elements
    x_plan = next((e for e in x if e.path == "X"), None)
    if x_plan is not None and (shape := x_plan.shape):
        chunks = x_plan.arrays[0].chunks
        assert chunks is not None  # a zarr array's plan has chunks
        candidate.x_orientations = [x_plan.orientation or "dense", *x_plan.copies]
        if x_plan.nnz is not None:  # sparse: chunk elements / nonzeros per major slice
            per_major = x_plan.nnz / max(1, shape[x_plan.orientation == "csc"])
            candidate.x_major_per_chunk = chunks[0] / max(per_major, 1e-9)
        else:
            candidate.x_major_per_chunk = float(chunks[0])
    return location


#: --search's loader variants of the best candidate for a training workload, as factors of
#: the block and buffer it was measured with: smaller blocks in a larger buffer (the same
#: rows held, four times the regions of the store mixed), larger blocks in a smaller one
#: (fewer, longer reads), and a larger buffer alone (more mixing for more memory)
LOADER_FACTORS = ((0.25, 4.0), (4.0, 0.25), (1.0, 4.0))


def loader_variants(candidate: Candidate) -> list[Candidate]:
    """Candidates that read ``candidate``'s store with other loader settings
    (:data:`LOADER_FACTORS` of the block rows and buffer its first training pattern was
    measured with); none without a training pattern."""
    settings = next(iter(candidate.loader_settings().values()), None)
    if settings is None:
        return []
    out = []
    for block_factor, buffer_factor in LOADER_FACTORS:
        block = max(1, round(settings["block_rows"] * block_factor))
        buffer = max(1, round(settings["buffer"] * buffer_factor))
        name = f"{candidate.name} (block {block}, buffer {buffer})"
        out.append(
            Candidate(
                name=name, layout=candidate.layout, origin="search",
                loader=LoaderSettings(block, buffer), base=candidate.base or candidate,
            )
        )  # fmt: skip
    return out


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
    major = chunks.major or chunks.rows
    for factor, label in ((0.25, "chunks-div4"), (4, "chunks-x4")):
        if major:
            new = ChunkSpec(major=max(1, int(major * factor)))
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
