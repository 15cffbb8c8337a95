"""Workloads: weighted access patterns, in YAML, addressable by shipped name or path.

Each pattern turns into a fixed list of operations (drawn from the workload's seed), so every
candidate layout answers exactly the same reads, and the answers can be compared.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from annlayout.base.errors import LayoutError
from annlayout.layout.yaml_errors import validate_file


class _Pattern(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    weight: PositiveFloat = Field(1.0, description="Share of this pattern in the score.")


class RandomRows(_Pattern):
    """Random minibatches of cells, all genes (ML training)."""

    kind: Literal["random-rows"]
    batch_size: PositiveInt = 256
    batches: PositiveInt = 8


class RowSlices(_Pattern):
    """Contiguous slices of cells, all genes."""

    kind: Literal["row-slices"]
    length: PositiveInt = 1000
    slices: PositiveInt = 4


class GeneQueries(_Pattern):
    """A few genes over all cells."""

    kind: Literal["gene-queries"]
    genes: PositiveInt = 1
    queries: PositiveInt = 8


class CategoryGenes(_Pattern):
    """The cells of one obs category, then a few genes in them (cell-browser dot plots)."""

    kind: Literal["category-genes"]
    column: str | None = Field(None, description="An obs column; default: the first categorical.")
    genes: PositiveInt = 5
    queries: PositiveInt = 4


class ObsColumns(_Pattern):
    """Whole obs columns."""

    kind: Literal["obs-columns"]
    names: list[str] | None = None
    count: PositiveInt | None = Field(None, description="Any N columns; default: all.")


class FullScan(_Pattern):
    """The whole matrix in blocks of rows."""

    kind: Literal["full-scan"]
    block_rows: PositiveInt = 10_000


class Training(_Pattern):
    """An epoch of a training loader (annlayout's, annbatch's ``Loader``): blocks of
    contiguous rows in a shuffled order, a buffer of them read together and shuffled in
    memory, cut into batches; timed per round (one epoch each), with how well each batch
    mixes ``label``."""

    kind: Literal["training"]
    batch_size: PositiveInt = Field(
        4096,
        description="Cells per batch; on fewer than batch_size / 0.1 cells measured it is "
        "capped at a tenth of them (a batch must be a small share of the data), with a warning.",
    )
    batches: PositiveInt | None = Field(
        None, description="Batches per round; default: a whole epoch of the cells measured."
    )
    block: PositiveInt | None = Field(
        None, description="Rows per contiguous read; default: one chunk of the store's X."
    )
    buffer: PositiveInt | None = Field(
        None,
        description="Blocks read together and shuffled in memory; default: the loader's "
        "(enough blocks for 8 batches).",
    )
    label: str | None = Field(
        None,
        description="The obs column whose mix per batch is measured (batch, donor, cell "
        "type); default: the input file of each cell as `annlayout concat --shuffle` or "
        "--groupby records it, else none (mixing not measured).",
    )
    min_mixing: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Exclude candidates whose batches mix the label less than this share of a "
        "true permutation's entropy (1.0: as mixed as a shuffle of every cell).",
    )


Pattern = Annotated[
    RandomRows | RowSlices | GeneQueries | CategoryGenes | ObsColumns | FullScan | Training,
    Field(discriminator="kind"),
]


class Workload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    workload: Literal[1] = Field(description="Workload file format version.")
    name: str
    description: str = ""
    seed: int = 0
    patterns: list[Pattern] = Field(min_length=1)


def workloads_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "workloads"


def shipped_workloads() -> dict[str, Path]:
    return {p.stem: p for p in sorted(workloads_dir().glob("*.yaml"))}


def load_workload(name_or_path: str | Path) -> Workload:
    shipped = shipped_workloads()
    text = str(name_or_path)
    if text in shipped:
        return validate_file(shipped[text], Workload, "a workload is a mapping (workload: 1, ...)")
    path = Path(text)
    if not path.is_file():
        hint = difflib.get_close_matches(text, list(shipped), n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else f" (shipped: {', '.join(shipped)})"
        raise LayoutError([f"{text}: no such workload file or shipped workload{extra}"])
    return validate_file(path, Workload, "a workload is a mapping (workload: 1, ...)")


# --------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Operation:
    """One read: ``X[rows, cols]`` or an obs column."""

    rows: Any = field(default_factory=lambda: slice(None))
    cols: Any = field(default_factory=lambda: slice(None))
    column: str | None = None

    @property
    def n_rows(self) -> int | None:
        return None if isinstance(self.rows, slice) else len(self.rows)


def operations(
    pattern: Any,
    shape: tuple[int, int],
    obs: Any,
    seed: int | list[int],
    number: int | None = None,
) -> Iterator[Operation]:
    """The reads a pattern makes on a dataset of ``shape`` (obs: the reader's obs frame).
    ``number`` replaces the number of random draws (batches, slices, queries) of one round of
    a benchmark; obs columns and full scans are the same reads whatever it is."""
    rng = np.random.default_rng(seed)
    n_obs, n_vars = shape
    match pattern:
        case RandomRows(batch_size=size, batches=batches):
            for _ in range(number or batches):
                rows = rng.choice(n_obs, min(size, n_obs), replace=False)
                yield Operation(rows=rows, cols=slice(None))
        case RowSlices(length=length, slices=slices):
            for _ in range(number or slices):
                start = int(rng.integers(0, max(1, n_obs - length)))
                yield Operation(rows=slice(start, min(n_obs, start + length)), cols=slice(None))
        case GeneQueries(genes=genes, queries=queries):
            for _ in range(number or queries):
                cols = np.sort(rng.choice(n_vars, min(genes, n_vars), replace=False))
                yield Operation(rows=slice(None), cols=cols)
        case CategoryGenes(column=column, genes=genes, queries=queries):
            name = column or _first_categorical(obs)
            values = obs[name]
            categories = (
                list(values.cat.categories) if hasattr(values, "cat") else sorted(set(values))
            )
            for _ in range(number or queries):
                chosen = categories[int(rng.integers(0, len(categories)))]
                rows = np.flatnonzero((values == chosen).to_numpy())
                cols = np.sort(rng.choice(n_vars, min(genes, n_vars), replace=False))
                yield Operation(rows=rows, cols=cols)
        case ObsColumns(names=names, count=count):
            columns = list(names or obs.columns)
            for column in columns[: count or len(columns)]:
                yield Operation(rows=slice(None), cols=slice(None), column=column)
        case FullScan(block_rows=block):
            for start in range(0, n_obs, block):
                yield Operation(rows=slice(start, min(n_obs, start + block)), cols=slice(None))
        case Training():
            raise TypeError("a training pattern replays a loader (bench.training), not operations")


def draws(pattern: Any) -> int | None:
    """How many random operations the pattern asks for (batches, slices, queries); None for
    the patterns whose reads are fixed (obs columns, full scans)."""
    for name in ("batches", "slices", "queries"):
        if getattr(pattern, name, None) is not None:
            return int(getattr(pattern, name))
    return None


def ops_per_epoch(pattern: Any, shape: tuple[int, int], obs: Any) -> int:
    """How many of the pattern's operations make one epoch: one full pass of its access pattern
    over a dataset of ``shape`` (the full dataset's, also when bench reads a sample; ``obs``:
    its obs frame). The one definition of an epoch, used by the cost model:

    - random-rows: ceil(n_obs / batch_size) minibatches (every cell once);
    - row-slices: ceil(n_obs / length) slices (every cell once);
    - gene-queries: ceil(n_vars / genes) queries (every gene once, over all cells);
    - category-genes: categories x ceil(n_vars / genes) (every gene once in every category);
    - obs-columns: the number of columns asked (names, else count, else all);
    - full-scan: one scan, i.e. ceil(n_obs / block_rows) blocks (an operation is a block);
    - training: one loader epoch, ceil(n_obs / batch_size) batches (an operation is a batch).
    """
    n_obs, n_vars = shape
    match pattern:
        case RandomRows(batch_size=size) | Training(batch_size=size):
            return math.ceil(n_obs / size)
        case RowSlices(length=length):
            return math.ceil(n_obs / length)
        case GeneQueries(genes=genes):
            return math.ceil(n_vars / genes)
        case CategoryGenes(column=column, genes=genes):
            values = obs[column or _first_categorical(obs)]
            categories = len(values.cat.categories) if hasattr(values, "cat") else len(set(values))
            return categories * math.ceil(n_vars / genes)
        case ObsColumns(names=names, count=count):
            available = len(names) if names else len(obs.columns)
            return min(count, available) if count else available
        case FullScan(block_rows=block):
            return math.ceil(n_obs / block)
    raise TypeError(f"unknown pattern {pattern!r}")


#: a batch or slice at most this share of the cells a benchmark reads: beyond it, a batch
#: touches most of any layout's chunks and the pattern stops meaning what it means at full size
BATCH_SHARE = 0.10


def cells_needed(pattern: Any) -> int:
    """The fewest cells on which ``pattern`` means what it means on a large dataset: a batch
    or slice at most :data:`BATCH_SHARE` of them; one whole block for a full scan; patterns
    over all cells or columns (gene queries, categories, obs columns) any number."""
    match pattern:
        case RandomRows(batch_size=size) | Training(batch_size=size):
            return math.ceil(size / BATCH_SHARE)
        case RowSlices(length=length):
            return math.ceil(length / BATCH_SHARE)
        case FullScan(block_rows=block):
            return block
    return 0


def size_scale(pattern: Any, full_rows: int, sample_rows: int) -> float:
    """What one operation reads on the full dataset relative to the sample: the cells it reads
    grow with the dataset for patterns over every cell (gene queries, a category's cells, obs
    columns) and for a full scan's blocks up to block_rows; a training batch measured smaller
    than its batch_size (:func:`training_batch`) grows to it; a batch or slice reads as many
    cells on both (1.0)."""
    if sample_rows <= 0:
        return 1.0
    if isinstance(pattern, Training):
        return min(pattern.batch_size, full_rows) / training_batch(pattern, sample_rows)
    if full_rows == sample_rows:
        return 1.0
    match pattern:
        case GeneQueries() | CategoryGenes() | ObsColumns():
            return full_rows / sample_rows
        case FullScan(block_rows=block):
            return min(block, full_rows) / min(block, sample_rows)
    return 1.0


SCALING = {
    "gene-queries": "x cells (every cell is read)",
    "category-genes": "x cells (a category's cells grow with the dataset)",
    "obs-columns": "x cells (whole columns)",
    "full-scan": "x rows per block (a block holds up to block_rows cells)",
    "training": "x cells per batch (measured with smaller batches than batch_size)",
}


EPOCH_DEFINITIONS = {
    "random-rows": "n_obs / batch_size minibatches",
    "row-slices": "n_obs / length slices",
    "gene-queries": "n_vars / genes queries",
    "category-genes": "categories x n_vars / genes queries",
    "obs-columns": "the columns asked",
    "full-scan": "1 scan = n_obs / block_rows blocks",
    "training": "1 loader epoch = n_obs / batch_size batches",
}


def training_batch(pattern: Training, rows: int) -> int:
    """The batch size a training pattern is measured with on ``rows`` cells: its own, capped
    at :data:`BATCH_SHARE` of them (a batch of most of the data reads most of every layout's
    chunks whatever the loader does, and leaves one or two batches an epoch)."""
    return max(1, min(pattern.batch_size, int(BATCH_SHARE * rows)))


def _first_categorical(obs: Any) -> str:
    for column in obs.columns:
        if hasattr(obs[column], "cat"):
            return column
    raise LayoutError(["category-genes: the dataset has no categorical obs column; give column:"])


def pattern_label(pattern: Any) -> str:
    match pattern:
        case RandomRows(batch_size=size):
            return f"random rows ({size})"
        case RowSlices(length=length):
            return f"row slices ({length})"
        case GeneQueries(genes=genes):
            return f"gene queries ({genes})"
        case CategoryGenes(genes=genes):
            return f"category, {genes} genes"
        case ObsColumns():
            return "obs columns"
        case FullScan(block_rows=block):
            return f"full scan ({block})"
        case Training(batch_size=size):
            return f"training ({size})"
    return str(pattern)
