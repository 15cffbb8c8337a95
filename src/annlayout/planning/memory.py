"""The memory model of ``apply`` and ``verify``: pure arithmetic, no IO.

From a plan, the input's dtypes, a budget and a number of workers, :func:`memory_plan` works
out, before anything is written:

- which elements are streamed (the rest go through anndata whole);
- the blocks of every streamed array: one per output shard, or per run of whole chunks that
  fits the budget where unsharded, and what one block holds at once;
- the out-of-core transposes (another orientation than the input's): the read block (nonzeros
  read at a time) and the pass budget (buffers of one pass over a range of the output);
- what does not fit: a shard whose block needs more than the budget per worker, a transpose
  whose shard writers and indptrs leave too little for its passes.

``verify`` sizes its blocks and its transposes with :func:`verify_sizes`, from the same
constants. Every number is an estimate of bytes in use, not a measurement; the benchmarks
(``benchmarks/test_apply.py``) check peak RSS against the budget plus a fixed allowance.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annlayout.base.defaults import MEMORY, VERIFY_MEMORY, WHOLE_BELOW
from annlayout.base.errors import AnnlayoutError, ApplyError, IntegrityError
from annlayout.base.sizes import parse_size
from annlayout.format.registry import get, lookup
from annlayout.planning.plan import ArrayPlan, ElementPlan, Plan, human_size, make_plan

#: A block holds the slice as read, its conversion (when the dtype changes) and about twice
#: the output bytes while the shard is encoded: per element, read + converted + 2 x written.
ENCODE_FACTOR = 2
#: A shard writer of a transpose holds a shard as converted and encoded: 3x its bytes.
WRITE_OVERHEAD = 3
#: Transposes: a shard writer writes one shard at a time, or, where unsharded, as many whole
#: chunks as fit in this many bytes (one zarr write per chunk would be slow), and in at most
#: 1/WRITE_SPAN_SHARE of the budget (so two writers leave most of it to the passes).
WRITE_SPAN_BYTES = 16 << 20
WRITE_SPAN_SHARE = 16
#: Transposes: bytes in flight per nonzero of a read block (int64 minor indices, masks,
#: positions, majors, values, sort order).
READ_BYTES_PER_NONZERO = 40
#: Read blocks take at most this share of the budget: read_block = budget // (40 * 4).
READ_SHARE = 4
MIN_READ_BLOCK, MAX_READ_BLOCK = 1 << 10, 4 << 20
#: A transpose whose passes get less than this share of the budget is refused (too many passes).
MIN_PASS_SHARE = 8
#: Transposes: the pass buffers per nonzero besides the value: its int64 major index.
PASS_INDEX_BYTES = 8
#: verify: the smallest block and pass budget, whatever --memory says.
MIN_VERIFY_BYTES = 1 << 20
#: verify: the largest compared block per side. Larger blocks read no faster, and verify runs
#: while both stores' obs, var and uns are held (after apply, in its process): a block of
#: --memory // 4 per side put 1 GB on top of them at --memory 1GiB.
MAX_VERIFY_BYTES = 64 << 20

MiB = 1 << 20


DEFAULT_MEMORY = parse_size(MEMORY)
DEFAULT_VERIFY_MEMORY = parse_size(VERIFY_MEMORY)
DEFAULT_WHOLE_BELOW = parse_size(WHOLE_BELOW)


def _mib(n: float) -> str:
    return f"{n / MiB:,.0f} MiB" if n >= MiB else f"{n / 1024:,.0f} KiB"


#: concat and append: row blocks of the inputs read and remapped ahead of the one being
#: written, on as many threads (:func:`annlayout.combine.concat.csr_blocks`).
READ_AHEAD = 2
#: concat and append: a dense block, and the combined values written between two checkpoints
#: of concat's combining step, take this share of the budget.
BLOCK_SHARE = 4


def per_worker(budget: int, workers: int) -> int:
    """What each of ``workers`` tasks running at once may hold (each runs within it)."""
    return max(1, budget // max(1, int(workers)))


def input_block_budget(budget: int) -> int:
    """The budget of one input row block (:func:`rows_per_block`): the block being written
    and the ``READ_AHEAD`` blocks read ahead of it are all in memory at once."""
    return budget // (READ_AHEAD + 1)


def dense_rows(n_vars: int, itemsize: int, budget: int) -> int:
    """Rows of a dense matrix moved at once (read, put on the result's columns, written):
    ``1/BLOCK_SHARE`` of the budget, for the block as read, as placed and as encoded."""
    return max(1, budget // BLOCK_SHARE // max(1, n_vars * itemsize))


def checkpoint_bytes(budget: int) -> int:
    """Values concat's combining step writes between two records of its progress: a
    ``1/BLOCK_SHARE`` of the budget is cheap to record and little to redo (a 1 GiB budget:
    every 256 MB, 1-2 s of writing)."""
    return budget // BLOCK_SHARE


def compared_rows(row_bytes: int, budget: int) -> int:
    """Rows of an array compared at once, read from both sides: one side's block of
    :func:`verify_sizes` each."""
    side, _ = verify_sizes(budget)
    return max(1, side // max(1, row_bytes))


def rows_per_block(nnz: int, n_obs: int, budget: int) -> int:
    """Rows whose nonzeros (value, index, row id, sort order: about 28 bytes each, twice
    while remapping) fill ``1/BLOCK_SHARE`` of the budget."""
    per_row = max(1.0, nnz / max(1, n_obs)) * 28 * 2
    return max(1, int(budget / BLOCK_SHARE / per_row))


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Block:
    """Copy ``source[start:stop]`` (axis 0) into ``target[start:stop]``, converting dtype."""

    element: str
    source_array: str
    target_array: str
    start: int
    stop: int
    dtype: str
    nbytes: int


@dataclass(frozen=True)
class ArrayBlocks:
    """How one array is copied: blocks of ``unit`` rows along axis 0."""

    element: str
    source: str  # the array's path in the input
    target: str  # ... and in the output
    dtype: str  # the output dtype
    rows: int
    unit: int  # rows per block: a shard, or a run of whole chunks
    row_bytes: int  # input bytes per row: what a block reads
    write_bytes: int  # output bytes of one shard (or chunk): what is written at once
    peak: int  # bytes one block holds at once
    sharded: bool
    budget: int  # per worker

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.rows / self.unit) if self.rows else 0

    @property
    def problem(self) -> str | None:
        if self.peak <= self.budget:
            return None
        what = "shard" if self.sharded else "chunk"
        return (
            f"{self.target}: one {what} is {_mib(self.write_bytes)}; writing it needs about "
            f"{_mib(self.peak)}, more than --memory per worker ({_mib(self.budget)}): raise "
            f"--memory or use smaller {what}s"
        )

    def blocks(self) -> Iterator[Block]:
        for start in range(0, self.rows, self.unit):
            stop = min(self.rows, start + self.unit)
            yield Block(
                self.element, self.source, self.target, start, stop, self.dtype,
                (stop - start) * self.row_bytes,
            )  # fmt: skip


def write_unit(plan: ArrayPlan) -> int:
    """Elements written at once: a shard, or a chunk where unsharded."""
    return max(1, (plan.shards or plan.chunks or plan.shape or (1,))[0])


def write_span(plan: ArrayPlan, budget: int) -> int:
    """Elements a shard writer (:class:`annlayout.write.whole_chunks.WholeChunkWriter`) of
    ``plan`` converts and writes at once (:func:`span_of`)."""
    unit = write_unit(plan)
    per_unit = unit * math.prod(plan.shape[1:]) * np.dtype(plan.dtype).itemsize
    return span_of(unit, per_unit, bool(plan.shards), budget)


def span_of(unit: int, unit_bytes: int, sharded: bool, budget: int) -> int:
    """Elements a :class:`~annlayout.write.whole_chunks.WholeChunkWriter` converts and writes
    at once, whoever writes (apply's transposes, append's growing arrays, concat's combined
    matrices): one shard (``unit`` elements of ``unit_bytes``), or the whole chunks that fit
    in ``WRITE_SPAN_BYTES`` and in ``budget // WRITE_SPAN_SHARE`` (at least one chunk), so a
    writer holds a bounded span, not what its caller hands it, and one zarr call writes
    many small chunks."""
    if sharded:
        return unit
    room = min(WRITE_SPAN_BYTES, budget // WRITE_SPAN_SHARE)
    return unit * max(1, room // max(1, unit_bytes))


def array_blocks(
    element: str,
    source: str,
    target: str,
    plan: ArrayPlan,
    source_dtype: Any,
    budget: int,
) -> ArrayBlocks:
    """One block per shard, or per run of whole chunks within ``budget`` if unsharded."""
    rows = plan.shape[0]
    read_dtype, write_dtype = np.dtype(source_dtype or plan.dtype), np.dtype(plan.dtype)
    converted = write_dtype.itemsize if read_dtype != write_dtype else 0
    per_row = math.prod(plan.shape[1:])
    unit = write_unit(plan)
    per_unit = (
        unit * per_row * (read_dtype.itemsize + converted + ENCODE_FACTOR * write_dtype.itemsize)
    )
    peak, rows_per_block = per_unit, unit
    if not plan.shards:  # as many whole chunks as fit
        runs = max(1, budget // max(1, per_unit))
        rows_per_block = min(max(1, rows), unit * runs)
        peak = per_unit * math.ceil(rows_per_block / unit)
    return ArrayBlocks(
        element=element, source=source, target=target, dtype=plan.dtype, rows=rows,
        unit=rows_per_block, row_bytes=per_row * read_dtype.itemsize,
        write_bytes=unit * per_row * write_dtype.itemsize, peak=peak,
        sharded=bool(plan.shards), budget=budget,
    )  # fmt: skip


# --------------------------------------------------------------------------- transposes


@dataclass(frozen=True)
class TransposeSizes:
    """How an out-of-core transpose reads (``read_block`` nonzeros at a time) and how large its
    passes' buffers may be (``pass_budget`` bytes)."""

    read_block: int
    pass_budget: int


def read_block(budget: int) -> int:
    """Nonzeros read at a time: their ~40 bytes each in flight take a quarter of ``budget``."""
    return int(
        min(MAX_READ_BLOCK, max(MIN_READ_BLOCK, budget // (READ_BYTES_PER_NONZERO * READ_SHARE)))
    )


def transpose_fixed(n_major: int, n_minor: int) -> int:
    """Bytes a transpose holds throughout: the input's indptr (as stored and as int64), and per
    minor index the new indptr, the counts, the bincount and the fill positions (int64)."""
    return 16 * (n_major + 1) + 32 * (n_minor + 1)


def pass_nonzeros(pass_budget: int, data_itemsize: int) -> int:
    """Nonzeros one pass of a transpose builds within ``pass_budget``: each its value and its
    int64 major index (``PASS_INDEX_BYTES``), at least one."""
    return max(1, pass_budget // (data_itemsize + PASS_INDEX_BYTES))


def transpose_sizes(budget: int, *, writes: int = 0, fixed: int = 0) -> TransposeSizes:
    """``apply``: passes get what the shard writers, the indptrs and the reads leave."""
    block = read_block(budget)
    return TransposeSizes(block, budget - writes - fixed - READ_BYTES_PER_NONZERO * block)


def verify_sizes(memory: int, *, fixed: int = 0) -> tuple[int, TransposeSizes]:
    """``verify``: (bytes per side of a compared block, transpose sizes).

    A compared block is read from both stores and compared in small slices: a quarter of
    ``memory`` per side (the rest for the codecs' buffers), at most ``MAX_VERIFY_BYTES``. A
    transpose compared with a stored orientation holds its pass buffers and the stored range
    read back (about as large), so each gets a third of what the reads and indptrs leave.
    """
    block = read_block(memory)
    passes = (memory - fixed - READ_BYTES_PER_NONZERO * block) // 3
    side = min(MAX_VERIFY_BYTES, max(MIN_VERIFY_BYTES, memory // 4))
    return side, TransposeSizes(block, max(MIN_VERIFY_BYTES, passes))


@dataclass(frozen=True)
class Transpose:
    """Build ``group`` (the element's group, or its copy subgroup) in ``orientation`` from the
    input's ``element``, out of core."""

    element: str
    group: str  # the output group that receives data, indices and indptr
    orientation: str
    arrays: Mapping[str, ArrayPlan] = field(hash=False)  # data, indices, indptr
    nnz: int
    data_itemsize: int
    sizes: TransposeSizes
    writes: int  # the shard writers of data and indices
    fixed: int  # indptrs and counts
    budget: int  # per worker
    source: str = ""  # the input's sparse group, where not ``element`` (legacy ``raw.X``)
    #: elements each shard writer (data, indices) writes at once (:func:`write_span`)
    spans: Mapping[str, int] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.source:
            object.__setattr__(self, "source", self.element)

    @property
    def pass_bytes(self) -> int:
        """The pass buffers: at most the pass budget, at least one pass over every nonzero."""
        return max(
            0, min(self.sizes.pass_budget, self.nnz * (self.data_itemsize + PASS_INDEX_BYTES))
        )

    @property
    def n_passes(self) -> int:
        total = self.nnz * (self.data_itemsize + PASS_INDEX_BYTES)
        return max(1, math.ceil(total / max(1, self.sizes.pass_budget))) if self.nnz else 0

    @property
    def peak(self) -> int:
        reads = READ_BYTES_PER_NONZERO * min(self.sizes.read_block, max(1, self.nnz))
        return self.writes + self.fixed + reads + self.pass_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "orientation": self.orientation,
            "read_block": self.sizes.read_block,
            "pass_budget_bytes": self.sizes.pass_budget,
            "passes": self.n_passes,
            "peak_bytes": self.peak,
        }

    @property
    def problem(self) -> str | None:
        if self.sizes.pass_budget >= self.budget // MIN_PASS_SHARE:
            return None
        return (
            f"{self.group}: building the {self.orientation} orientation needs more than --memory "
            f"per worker ({_mib(self.budget)}): its shard writers take {_mib(self.writes)} and "
            f"its indptrs {_mib(self.fixed)}; raise --memory or use smaller shards"
        )


def plan_transpose(
    plan: ElementPlan, orientation: str, arrays: Mapping[str, ArrayPlan], data_itemsize: int,
    budget: int, group: str,
) -> Transpose:  # fmt: skip
    shape = plan.shape or (0, 0)
    # the input's axes: its major axis is the minor axis of the orientation built
    n_major, n_minor = (shape[1], shape[0]) if orientation == "csr" else (shape[0], shape[1])
    fixed = transpose_fixed(n_major, n_minor)
    spans = {name: write_span(arrays[name], budget) for name in ("data", "indices")}
    writes = sum(
        spans[name] * np.dtype(arrays[name].dtype).itemsize * WRITE_OVERHEAD for name in spans
    )
    return Transpose(
        element=plan.path, group=group, orientation=orientation, arrays=dict(arrays),
        nnz=plan.nnz or 0, data_itemsize=data_itemsize,
        sizes=transpose_sizes(budget, writes=writes, fixed=fixed), writes=writes, fixed=fixed,
        budget=budget, spans=spans,
    )  # fmt: skip


# --------------------------------------------------------------------------- elements


def streamable(plan: ElementPlan, small: int) -> bool:
    """Streamed in blocks (or transposed) rather than read whole through anndata."""
    if plan.nbytes <= small:
        return False
    spec = get(plan.encoding)
    if spec is not None and spec.sparse:
        return True
    array = plan.arrays[0] if plan.arrays else None
    return (
        spec is not None
        and spec.dense
        and array is not None
        and len(array.shape) >= 1
        and array.dtype not in ("string", "record")
    )


@dataclass(frozen=True)
class ElementMemory:
    """How one element is copied and what it holds at once."""

    path: str
    streamed: bool
    arrays: tuple[ArrayBlocks, ...] = ()
    transposes: tuple[Transpose, ...] = ()
    whole: int = 0  # bytes held at once outside blocks: the element read whole, or an indptr

    @property
    def n_blocks(self) -> int:
        return sum(a.n_blocks for a in self.arrays)

    @property
    def peak(self) -> int:
        return max([self.whole, *(a.peak for a in self.arrays), *(t.peak for t in self.transposes)])

    @property
    def problems(self) -> list[str]:
        found = [a.problem for a in self.arrays] + [t.problem for t in self.transposes]
        return [p for p in found if p]

    @property
    def how(self) -> str:
        if not self.streamed:
            return "whole"
        parts = ["blocks"] if self.arrays else []
        parts += [f"transpose ({t.orientation})" for t in self.transposes]
        return " + ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "how": self.how,
            "blocks": self.n_blocks,
            "largest_block_bytes": max((a.unit * a.row_bytes for a in self.arrays), default=0),
            "transposes": [t.to_json() for t in self.transposes],
            "peak_bytes": self.peak,
            "problems": self.problems,
        }


@dataclass(frozen=True)
class MemoryPlan:
    """Every element's blocks, transposes and peak, against a budget shared by workers."""

    budget: int
    workers: int
    small: int
    elements: tuple[ElementMemory, ...]

    @property
    def per_worker(self) -> int:
        return self.budget // self.workers

    @property
    def violations(self) -> list[str]:
        return [p for e in self.elements for p in e.problems]

    @property
    def transposes(self) -> list[Transpose]:
        return [t for e in self.elements for t in e.transposes]

    def element(self, path: str) -> ElementMemory:
        return next(e for e in self.elements if e.path == path)

    def array(self, target: str) -> ArrayBlocks | None:
        return next((a for e in self.elements for a in e.arrays if a.target == target), None)

    def blocks(self) -> list[Block]:
        return [b for e in self.elements for a in e.arrays for b in a.blocks()]

    @property
    def notes(self) -> list[str]:
        """What the budget does not bound, said where it matters: elements copied whole (under
        ``--whole-below``, or not streamable) that hold more than a worker's share."""
        beyond = sorted(
            (e for e in self.elements if not e.streamed and e.whole > self.per_worker),
            key=lambda e: -e.whole,
        )
        if not beyond:
            return []
        largest = beyond[0]
        count = f"{len(beyond)} elements hold" if len(beyond) > 1 else "1 element holds"
        return [
            f"--memory {human_size(self.budget)} does not bound elements copied whole: {count} "
            f"more (largest {largest.path}, about {human_size(largest.whole)}), being under "
            f"--whole-below {human_size(self.small)} or not streamable; lower --whole-below to "
            "stream what can be"
        ]

    def check(self, error: type[AnnlayoutError] = ApplyError) -> None:
        """Refuse, in one line naming the array or element, what does not fit the budget
        (as ``error``: the command's own)."""
        problems = self.violations
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise error(problems[0] + more)

    def to_json(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget,
            "workers": self.workers,
            "per_worker_bytes": self.per_worker,
            "whole_below_bytes": self.small,
            "elements": [e.to_json() for e in self.elements],
            "violations": self.violations,
            "notes": self.notes,
        }


def source_dtypes(survey: Any) -> dict[str, str]:
    """The input's dtype of every stored array, by path (``X/data``, ``obsm/X_pca``)."""
    return {
        f"{e.path}/{a.name}" if a.name else e.path: a.dtype
        for e in survey.elements
        for a in e.arrays
    }


def _numeric(dtype: str | None) -> Any:
    try:
        return np.dtype(dtype) if dtype else None
    except TypeError:
        return None


def element_memory(
    plan: ElementPlan, dtypes: Mapping[str, str], budget: int, small: int
) -> ElementMemory:
    if not streamable(plan, small):
        return ElementMemory(plan.path, streamed=False, whole=ENCODE_FACTOR * plan.nbytes)
    spec = lookup(plan.encoding, plan.path)
    if not spec.sparse:
        array = plan.arrays[0]
        dtype = _numeric(dtypes.get(plan.path)) or array.dtype
        blocks = array_blocks(plan.path, plan.path, plan.path, array, dtype, budget)
        return ElementMemory(plan.path, streamed=True, arrays=(blocks,))
    current = spec.orientation
    assert plan.orientation is not None  # a sparse element's plan has one
    data_dtype = _numeric(dtypes.get(f"{plan.path}/data")) or np.dtype(plan.arrays[0].dtype)
    orientations = [(plan.orientation, "")] + [(o, f"{o}/") for o in plan.copies]
    arrays, transposes, whole = [], [], 0
    for orientation, prefix in orientations:
        named = plan.parts(orientation)
        if orientation == current:  # copied in blocks; indptr whole, converted
            for name in ("data", "indices"):
                source = f"{plan.path}/{name}"
                dtype = _numeric(dtypes.get(source)) or named[name].dtype
                arrays.append(
                    array_blocks(plan.path, source, f"{plan.path}/{prefix}{name}", named[name],
                                 dtype, budget)
                )  # fmt: skip
            indptr = named["indptr"]
            stored = _numeric(dtypes.get(f"{plan.path}/indptr")) or np.dtype(indptr.dtype)
            whole = indptr.shape[0] * (
                stored.itemsize + WRITE_OVERHEAD * np.dtype(indptr.dtype).itemsize
            )
        else:
            group = f"{plan.path}/{prefix.rstrip('/')}" if prefix else plan.path
            transposes.append(
                plan_transpose(plan, orientation, named, data_dtype.itemsize, budget, group)
            )
    return ElementMemory(
        plan.path, streamed=True, arrays=tuple(arrays), transposes=tuple(transposes), whole=whole
    )


def plan_within_budget(
    layout: Any, survey: Any, budget: int, workers: int, small: int
) -> tuple[Plan, MemoryPlan]:
    """Plan ``layout`` against ``survey`` and refuse, in one line, an element the target
    cannot hold or one that does not fit ``budget``: what every command checks before it
    reads any data (apply on its input; concat on the store its inputs will make)."""
    plan = make_plan(layout, survey)
    model = memory_plan(plan, source_dtypes(survey), budget, workers, small)
    if plan.unwritable:
        more = len(plan.unwritable) - 1
        raise ApplyError(
            f"{plan.unwritable[0]}" + (f" (and {more} more)" if more else "") + "; nothing written"
        )
    model.check()
    return plan, model


def grown_memory(
    plan: Plan,
    dtypes: Mapping[str, str],
    budget: int,
    added: Mapping[str, tuple[int, int]],
    small: int = DEFAULT_WHOLE_BELOW,
) -> MemoryPlan:
    """append's memory model: each element it grows (``added``: path -> the rows and
    nonzeros the inputs add) as apply would copy it at its grown size: its shards written
    whole (from the last partial one on) and its second orientations rebuilt by the
    transpose. What does not fit is a violation, refused before any input is read, as apply
    refuses. Elements under ``small`` are left out as apply leaves them out: whatever append
    holds of one (a few times its size) is within the allowance beside the budget."""
    elements = []
    for element in plan.elements:
        if element.path not in added or element.shape is None:
            continue
        rows, nnz = added[element.path]
        grown = element.model_copy(
            update={
                "shape": (element.shape[0] + rows, *element.shape[1:]),
                "nnz": None if element.nnz is None else element.nnz + nnz,
            }
        )
        elements.append(element_memory(grown, dtypes, budget, small))
    return MemoryPlan(budget=budget, workers=1, small=small, elements=tuple(elements))


def memory_plan(
    plan: Plan,
    dtypes: Mapping[str, str],
    budget: int,
    workers: int = 1,
    small: int = DEFAULT_WHOLE_BELOW,
) -> MemoryPlan:
    """Blocks, transposes, peaks and violations of applying ``plan`` within ``budget`` bytes
    shared by ``workers`` (each block or transpose gets ``budget // workers``).

    ``dtypes`` are the input's dtypes by array path (:func:`source_dtypes`); an array missing
    from it is read as its planned dtype.
    """
    workers = max(1, int(workers))
    per_worker = budget // workers
    elements = tuple(element_memory(e, dtypes, per_worker, small) for e in plan.elements)
    return MemoryPlan(budget=budget, workers=workers, small=small, elements=elements)


__all__ = [
    "DEFAULT_MEMORY",
    "DEFAULT_VERIFY_MEMORY",
    "DEFAULT_WHOLE_BELOW",
    "ArrayBlocks",
    "Block",
    "ElementMemory",
    "MemoryPlan",
    "Transpose",
    "TransposeSizes",
    "array_blocks",
    "checkpoint_bytes",
    "compared_rows",
    "dense_rows",
    "grown_memory",
    "input_block_budget",
    "memory_plan",
    "parse_size",
    "pass_nonzeros",
    "per_worker",
    "read_block",
    "source_dtypes",
    "span_of",
    "streamable",
    "transpose_fixed",
    "transpose_sizes",
    "verify_sizes",
    "write_span",
    "write_unit",
]


def check_disjoint_units(
    array: str, spans: Sequence[tuple[int, int]], unit: int, length: int
) -> None:
    """Tasks planned to write ``spans`` (start, stop along axis 0) of ``array``, whose write
    unit (a shard, or a chunk where unsharded) is ``unit`` rows: each must write whole units
    only (the last may end at ``length``), and no two the same unit. zarr-python loses data
    silently when two processes write parts of one shard at once (zarr-python #3682); a plan
    that would is a bug, stopped here before anything is written."""
    end = 0
    for start, stop in sorted(spans):
        if start % unit or (stop % unit and stop != length) or stop > length:
            raise IntegrityError(
                f"{array}: a task would write rows {start}-{stop}, not whole shards of {unit}"
            )
        if start < end:
            raise IntegrityError(
                f"{array}: two tasks would write the shard at row {start // unit * unit}"
            )
        end = stop
