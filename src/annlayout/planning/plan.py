"""Pure planning: layout x survey -> concrete chunks, shards, codecs and sizes per array.

No IO happens here. The callback calls the same functions element by element while anndata
writes, so a plan and a write can never disagree.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from annlayout.base.errors import PlanError
from annlayout.format.registry import get, lookup
from annlayout.layout.spec import Layout, ResolvedSettings, Target
from annlayout.planning.codecs import CodecModel, describe, storable
from annlayout.planning.survey_models import ArrayInfo, ElementInfo, Survey

SMALL_CHUNK = 64 << 10
#: Small chunks are worth a warning from this many on: each costs about 0.5 ms to write with
#: zarr-python (the anndata guide's 2^8-element chunks: 188 s for ~350,000 chunks), so fewer
#: add well under a second, and a small dataset's chunks are small only because it is.
MANY_SMALL_CHUNKS = 1_000
LARGE_CHUNK = 64 << 20
MANY_OBJECTS = 10_000
#: indptr is read whole for any row selection; one chunk holds up to 1 Mi offsets (8 MiB).
INDPTR_CHUNK = 1 << 20

Kind = Literal["dense", "scalar", "sparse", "indptr"]


class ArrayPlan(BaseModel):
    """How one stored array is written."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...] | None  # None: contiguous (scalars, empty arrays in h5ad)
    shards: tuple[int, ...] | None
    codecs: str  # for people: "zstd(3)+shuffle"
    #: what a writer applies: the layout's codecs the target can store, none where the array
    #: cannot be compressed (scalars; empty arrays in h5ad)
    codec_models: tuple[CodecModel, ...] = ()
    itemsize: int = 0
    chunk_bytes: int
    n_chunks: int
    n_objects: int
    warnings: list[str] = []


class ElementPlan(BaseModel):
    path: str
    encoding: str
    rule: int | None  # index into the layout's rules, None: defaults
    rule_origin: str = ""
    shape: tuple[int, ...] | None = None
    nnz: int | None = None
    orientation: str | None = None  # sparse: the primary's orientation
    copies: list[str] = []  # sparse: extra orientations the layout asks for
    index_dtype: str | None = None
    arrays: list[ArrayPlan]
    copy_arrays: list[ArrayPlan] = []  # named "csc/data", ... as stored in the element group

    @property
    def warnings(self) -> list[str]:
        return [w for a in (*self.arrays, *self.copy_arrays) for w in a.warnings]

    def parts(self, orientation: str | None = None) -> dict[str, ArrayPlan]:
        """A sparse element's arrays in ``orientation`` (the primary's by default), named as
        stored in their own group: ``data``, ``indices``, ``indptr``."""
        if orientation is None or orientation == self.orientation:
            return {a.name: a for a in self.arrays}
        prefix = f"{orientation}/"
        return {
            a.name.removeprefix(prefix): a.model_copy(update={"name": a.name.removeprefix(prefix)})
            for a in self.copy_arrays
            if a.name.startswith(prefix)
        }

    @property
    def n_objects(self) -> int:
        return sum(a.n_objects for a in (*self.arrays, *self.copy_arrays))

    @property
    def nbytes(self) -> int:
        return sum(
            math.prod(a.shape) * _itemsize(a.dtype) for a in (*self.arrays, *self.copy_arrays)
        )


class Plan(BaseModel):
    layout: str
    layout_sha256: str
    target: Target
    source: str
    elements: list[ElementPlan]
    warnings: list[str] = []  # layout-level: rules that matched nothing
    #: elements the target format cannot store, one line each: apply refuses them
    unwritable: list[str] = []

    @property
    def n_objects(self) -> int:
        return sum(e.n_objects for e in self.elements)

    def element(self, path: str) -> ElementPlan:
        return next(e for e in self.elements if e.path == path)

    def all_warnings(self) -> list[str]:
        out = [f"{problem}; apply refuses it" for problem in self.unwritable] + self.warnings
        for element in self.elements:
            for array in (*element.arrays, *element.copy_arrays):
                name = f"{element.path}/{array.name}" if array.name else element.path
                out += [f"{name}: {w}" for w in array.warnings]
        return out

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data (what ``to_json`` prints): for checks in a pipeline."""
        data = self.model_dump(mode="json")
        data["n_objects"] = self.n_objects
        data["warnings"] = self.all_warnings()
        return data

    def to_json(self, indent: int | None = 2) -> str:
        """The plan as JSON text, as ``annlayout plan --json`` prints it."""
        return json.dumps(self.to_dict(), indent=indent)


# --------------------------------------------------------------------------- entry points


def make_plan(layout: Layout, survey: Survey) -> Plan:
    """Resolve ``layout`` against ``survey``: every element gets concrete storage settings."""
    used: set[int] = set()
    elements = []
    for element in survey.elements:
        rule, settings = layout.rule_for(element.path, element.encoding)
        if rule is not None:
            used.add(rule)
        elements.append(plan_element(element, settings, layout.target, rule, layout))
    warnings = [
        line
        for i in range(len(layout.rules))
        if i not in used
        for line in _unmatched(layout, i, survey, elements)
    ]
    fmt = layout.target.format
    unwritable = [
        f"{element.path}{'/' + array.name if array.name else ''}: {array.unholdable[fmt]}"
        for element in survey.elements
        for array in element.arrays
        if fmt in array.unholdable
    ]
    return Plan(
        layout=layout.name,
        layout_sha256=layout.sha256(),
        target=layout.target,
        source=survey.source,
        elements=elements,
        warnings=warnings,
        unwritable=unwritable,
    )


#: where columns are genes: a CSC copy answers gene queries
_GENE_COLUMNS = ("X", "layers/", "raw/X")


def _unmatched(layout: Layout, index: int, survey: Survey, planned: list[ElementPlan]) -> list[str]:
    """Why rule ``index`` matched no element, in the user's terms: an element its paths name
    is stored in another encoding (X dense where the rule is for sparse X), and no other rule
    that names it took it, so what the rule is for does not happen there."""
    rule = layout.rules[index]
    where = f"rule {index} ({rule.origin or f'rules[{index}]'})"
    lines = []
    for element, plan in zip(survey.elements, planned, strict=True):
        taken = layout.rules[plan.rule] if plan.rule is not None else None
        if rule.match.encoding is None or not rule.match.names(element.path):
            continue
        if taken is not None and taken.match.names(element.path):
            continue  # another rule for this path took it: the layout meant that
        spec = get(element.encoding)
        noun = spec.noun if spec is not None and spec.noun else f"stored as {element.encoding}"
        wanted = " or ".join(rule.match.encodings)
        copy = (rule.orientations or [])[1:]
        lost = ""
        if copy:  # what the second orientation was for, along this element's axes
            genes = element.path.startswith(_GENE_COLUMNS)
            axis = {"csc": ("gene", "column"), "csr": ("cell", "row")}[copy[0]][not genes]
            lost = f": no {copy[0].upper()} copy for {axis} queries"
        instead = f"rule {plan.rule} ({taken.origin})" if taken is not None else "the defaults"
        lines.append(
            f"{layout.name}: {element.path} is {noun} ({element.encoding}), so {where}, which "
            f"is for {wanted}, does not apply to it{lost}; {element.path} takes {instead}"
        )
    if lines or rule.shipped:  # a shipped rule for an element this dataset lacks: no mistake
        return lines
    return [f"{where} matched no element"]


def plan_element(
    element: ElementInfo,
    settings: ResolvedSettings,
    target: Target,
    rule: int | None = None,
    layout: Layout | None = None,
) -> ElementPlan:
    origin = layout.rules[rule].origin if layout is not None and rule is not None else ""
    plan = ElementPlan(
        path=element.path,
        encoding=element.encoding,
        rule=rule,
        rule_origin=origin,
        shape=element.shape,
        nnz=element.nnz,
        arrays=[],
    )
    spec = get(element.encoding)
    if spec is not None and spec.sparse:
        _plan_sparse(plan, element, settings, target)
    else:
        plan.arrays = [
            plan_array(a.name, a.shape, a.dtype, a.itemsize, settings, target, _kind(a))
            for a in element.arrays
        ]
    return plan


def _kind(array: ArrayInfo) -> Kind:
    return "scalar" if array.shape == () else "dense"


def _plan_sparse(
    plan: ElementPlan, element: ElementInfo, settings: ResolvedSettings, target: Target
) -> None:
    assert element.shape is not None and element.nnz is not None
    shape, nnz = element.shape, element.nnz
    stored = lookup(element.encoding, element.path).oriented(element.path)
    orientations = list(settings.orientations or [stored])
    plan.orientation, plan.copies = orientations[0], orientations[1:]
    data = element.array("data")
    current = (element.array("indices").dtype, element.array("indptr").dtype)

    def dtypes_for(orientation: str) -> tuple[str, str]:
        # indices count along the orientation's minor axis: columns for CSR, rows for CSC
        minor = shape[orientation == "csr"]
        indices, indptr = index_dtypes(
            settings.index_dtype, minor=minor, nnz=nnz, current=current,
            where=element.path,
        )  # fmt: skip
        if np.iinfo(np.dtype(indices)).max < minor - 1:  # "keep" on a copy: too narrow
            indices = index_dtypes(
                "minimal", minor=minor, nnz=nnz, current=current, where=element.path
            )[0]
        return indices, indptr

    indices_dtype, indptr_dtype = dtypes_for(plan.orientation)
    plan.index_dtype = (
        f"indices {np.dtype(indices_dtype).name}, indptr {np.dtype(indptr_dtype).name}"
    )
    for orientation in orientations:
        major = element.shape[orientation == "csc"]
        own = settings if orientation == plan.orientation else settings.for_copy()
        indices_dtype, indptr_dtype = (_short(t) for t in dtypes_for(orientation))
        arrays = sparse_arrays(
            nnz=element.nnz,
            n_major=major,
            data_dtype=data.dtype,
            data_itemsize=data.itemsize,
            indices_dtype=indices_dtype,
            indptr_dtype=indptr_dtype,
            settings=own,
            target=target,
        )
        if orientation == plan.orientation:
            plan.arrays = arrays
        else:
            plan.copy_arrays = [
                a.model_copy(update={"name": f"{orientation}/{a.name}"}) for a in arrays
            ]


def sparse_arrays(
    *,
    nnz: int,
    n_major: int,
    data_dtype: str,
    data_itemsize: int,
    indices_dtype: str,
    indptr_dtype: str,
    settings: ResolvedSettings,
    target: Target,
) -> list[ArrayPlan]:
    """Plans for data, indices and indptr; data and indices share chunk boundaries."""
    per_major = nnz / n_major if n_major else 0.0
    pair_itemsize = data_itemsize + _itemsize(indices_dtype)
    context = {
        "per_major": per_major,
        "data_itemsize": data_itemsize,
        "pair_itemsize": pair_itemsize,
    }
    return [
        plan_array("data", (nnz,), data_dtype, data_itemsize, settings, target, "sparse", context),
        plan_array(
            "indices",
            (nnz,),
            indices_dtype,
            _itemsize(indices_dtype),
            settings,
            target,
            "sparse",
            context,
        ),
        plan_array(
            "indptr",
            (n_major + 1,),
            indptr_dtype,
            _itemsize(indptr_dtype),
            settings,
            target,
            "indptr",
        ),
    ]


def index_dtypes(
    policy: str, *, minor: int, nnz: int, current: tuple[str, str], where: str
) -> tuple[str, str]:
    """(indices dtype, indptr dtype) for an index dtype policy."""
    if policy == "keep":
        return current
    if policy == "minimal":
        # the smallest type scipy indexes with: int32 where the values fit. Not uint8/uint16,
        # though they hold fewer genes in fewer bytes: anndata hands the stored arrays to
        # scipy as they are, and scipy's selections on a uint16 or int16 index read wrong
        # memory (a[:, genes] crashed the process on scipy 1.17, anndata 0.12 and 0.13).
        indices = "int32" if minor <= np.iinfo(np.int32).max else "int64"
        indptr = "int32" if nnz <= np.iinfo(np.int32).max else "int64"
        return indices, indptr
    limit = np.iinfo(policy).max
    if nnz > limit or minor > limit:
        raise PlanError(
            f"{where}: index_dtype {policy} cannot hold {max(nnz, minor):,} "
            f"(nonzeros or columns); use int64 or minimal"
        )
    return policy, policy


def plan_array(
    name: str,
    shape: tuple[int, ...],
    dtype: str,
    itemsize: int,
    settings: ResolvedSettings,
    target: Target,
    kind: Kind = "dense",
    context: dict[str, float] | None = None,
) -> ArrayPlan:
    """Concrete chunks, shards and codecs for one array."""
    shape = tuple(int(n) for n in shape)
    models = storable(settings.codecs, target.format, target.zarr_format)
    codecs = describe(models)
    if kind == "scalar" or shape == ():
        # anndata cannot compress or chunk scalars; zarr stores them as one object
        return ArrayPlan(
            name=name, shape=shape, dtype=dtype, chunks=None, shards=None, codecs="none",
            itemsize=itemsize, chunk_bytes=itemsize, n_chunks=1, n_objects=1,
        )  # fmt: skip
    if 0 in shape:
        # nothing to chunk; h5py refuses chunks on empty datasets, zarr needs positive chunks
        h5ad = target.format == "h5ad"  # contiguous, and so uncompressed
        chunks = None if h5ad else tuple(max(1, n) for n in shape)
        return ArrayPlan(
            name=name, shape=shape, dtype=dtype, chunks=chunks, shards=None,
            codecs="none" if h5ad else codecs, codec_models=() if h5ad else models,
            itemsize=itemsize, chunk_bytes=0, n_chunks=0, n_objects=0,
        )  # fmt: skip
    warnings: list[str] = []
    chunks = _chunk_shape(shape, itemsize, settings, kind, context or {}, warnings)
    shards = None
    # zarr's sharding codec cannot hash structured fill values: record arrays stay unsharded
    shardable = dtype != "record"
    if (
        target.format == "zarr"
        and target.zarr_format == 3
        and settings.shards.enabled
        and shardable
    ):
        shards = _shard_shape(shape, chunks, itemsize, settings, kind, warnings)
    n_chunks = math.prod(math.ceil(n / c) for n, c in zip(shape, chunks, strict=True))
    n_objects = (
        math.prod(math.ceil(n / s) for n, s in zip(shape, shards, strict=True))
        if shards
        else n_chunks
    )
    chunk_bytes = math.prod(chunks) * itemsize
    # data and indices share chunk boundaries and are always read together: judge the pair,
    # once (on data)
    pair = int(context["pair_itemsize"]) if kind == "sparse" and context else 0
    if not (pair and name == "indices"):
        warnings += _small_chunks(shape, chunks, itemsize, pair, n_chunks, settings, context)
    if chunk_bytes > LARGE_CHUNK:
        warnings.append(
            f"chunks of {_size(chunk_bytes)} are over 64 MiB: reading one row decompresses "
            "the whole chunk, and writers hold several in memory"
        )
    if target.format == "zarr" and n_objects > MANY_OBJECTS:
        warnings.append(
            f"{n_objects:,} objects in one array: file systems and object stores slow down; "
            "use larger chunks or shards"
        )
    return ArrayPlan(
        name=name,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        shards=shards,
        codecs=codecs,
        codec_models=models,
        itemsize=itemsize,
        chunk_bytes=chunk_bytes,
        n_chunks=n_chunks,
        n_objects=n_objects,
        warnings=warnings,
    )


def _small_chunks(
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    itemsize: int,
    pair_itemsize: int,
    n_chunks: int,
    settings: ResolvedSettings,
    context: dict[str, float] | None,
) -> list[str]:
    """The small-chunk warning, where it is true of this array: its chunks are under 64 KiB,
    there are enough of them for their per-chunk costs to add up, and larger ones are
    possible. Says the setting (in the layout's own unit) that makes them 64 KiB."""
    per_item = pair_itemsize or itemsize  # a sparse chunk is read with its indices
    size = math.prod(chunks) * per_item
    whole = math.prod(shape) * per_item
    if size >= SMALL_CHUNK or n_chunks < MANY_SMALL_CHUNKS or whole < SMALL_CHUNK:
        return []  # large enough; too few to matter; or the whole array is smaller
    # how many indices along axis 0 make 64 KiB: rows (dense), nonzeros (sparse)
    needed = math.ceil(SMALL_CHUNK / (math.prod(chunks[1:]) * per_item))
    spec = settings.chunks
    unit = "major" if spec.major else "rows"
    if pair_itemsize and (spec.rows or spec.major) and context:
        advice = f"{{{unit}: {math.ceil(SMALL_CHUNK / (context['per_major'] * per_item)):,}}}"
    elif spec.rows or spec.major:
        advice = f"{{{unit}: {needed:,}}}"
    elif spec.elements:
        advice = f"{{elements: {needed * math.prod(shape[1:]):,}}}"
    elif spec.bytes:
        advice = "{bytes: 64KiB}"
    else:
        advice = str([needed, *chunks[1:]])
    what = "chunks (data and indices together)" if pair_itemsize else "chunks"
    guide = (  # the measured comparison, where it is a fair one
        "; the anndata guide's 1 KiB (2^8-element) chunks write 50x slower than 1 MiB ones"
        if size <= 4 * 1024
        else ""
    )
    return [
        f"{n_chunks:,} {what} of {_size(size)}, under 64 KiB: each costs a request and an "
        f"index entry whatever its size; chunks: {advice} makes them 64 KiB{guide}"
    ]


def _chunk_shape(
    shape: tuple[int, ...],
    itemsize: int,
    settings: ResolvedSettings,
    kind: Kind,
    context: dict[str, float],
    warnings: list[str],
) -> tuple[int, ...]:
    spec = settings.chunks
    row_size = math.prod(shape[1:]) * itemsize  # bytes in one index of axis 0
    if kind == "indptr":
        return (min(shape[0], INDPTR_CHUNK),)
    if spec.shape is not None:
        given = [
            shape[i] if v is None or v == -1 else v for i, v in enumerate(spec.shape[: len(shape)])
        ]
        if len(spec.shape) != len(shape):
            warnings.append(
                f"chunks {list(spec.shape)} has {len(spec.shape)} axes, the array "
                f"{len(shape)}: used the first, whole extent for the rest"
            )
        given += list(shape[len(given) :])
        return tuple(max(1, min(int(c), n)) for c, n in zip(given, shape, strict=True))
    if kind == "sparse":
        per_major, data_itemsize = context["per_major"], int(context["data_itemsize"])
        if spec.rows is not None or spec.major is not None:
            first = math.ceil((spec.rows or spec.major or 1) * per_major)
        elif spec.elements is not None:
            first = spec.elements
        else:  # bytes: counted in data values, so data and indices share chunk boundaries
            first = int(spec.bytes or 0) // data_itemsize
    elif spec.rows is not None or spec.major is not None:
        first = spec.rows or spec.major or 1
    elif spec.elements is not None:
        first = spec.elements // max(1, math.prod(shape[1:]))
    else:
        first = int(spec.bytes or 0) // max(1, row_size)
    return (max(1, min(int(first), shape[0])), *shape[1:])


def _shard_shape(
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    itemsize: int,
    settings: ResolvedSettings,
    kind: Kind,
    warnings: list[str],
) -> tuple[int, ...]:
    """Shards are whole multiples of chunks, and no larger than the array rounded up to chunks."""
    spec = settings.shards
    whole = tuple(math.ceil(n / c) for n, c in zip(shape, chunks, strict=True))  # chunks per axis
    if kind == "indptr":
        multiples = whole  # one shard: indptr is small and always read whole
    elif spec.shape is not None:
        wanted = list(spec.shape[: len(shape)]) + list(shape[len(spec.shape) :])
        multiples = tuple(max(1, math.ceil(w / c)) for w, c in zip(wanted, chunks, strict=True))
        if any(w % c for w, c in zip(wanted, chunks, strict=True)):
            warnings.append(
                f"shards {list(spec.shape)} rounded up to a multiple of chunks {list(chunks)}"
            )
    elif spec.chunks is not None:
        per_axis = [spec.chunks] if isinstance(spec.chunks, int) else list(spec.chunks)
        multiples = tuple(per_axis[: len(shape)] + [1] * (len(shape) - len(per_axis)))
    else:
        chunk_bytes = math.prod(chunks) * itemsize
        multiples = (max(1, int(spec.bytes or 0) // max(1, chunk_bytes)), *([1] * (len(shape) - 1)))
    return tuple(c * min(m, w) for c, m, w in zip(chunks, multiples, whole, strict=True))


_ITEMSIZE = {"string": 16, "record": 0, "category": 0, "awkward": 0}


def _short(dtype: str) -> str:
    """numpy's short form (``u2``, ``i8``): what surveys report, so plans compare equal."""
    return np.dtype(dtype).str.lstrip("<>|=")


def _itemsize(dtype: str) -> int:
    if dtype in _ITEMSIZE:
        return _ITEMSIZE[dtype]
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def human_size(n: float | None) -> str:
    return "-" if n is None else _size(n)
