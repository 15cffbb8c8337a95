"""``annlayout append``: new cells added to a store annlayout wrote, in its recorded layout.

The store's genes stay as they are (its var, varm, varp and uns are kept), so every array
along the cells grows at its end and nothing before its last partial shard changes. The new
store is built in a hidden sibling: every file that does not change is a hard link to the
store's own (no bytes copied), metadata files are copies, and each array along the cells is
written from its last partial shard on (the old tail, then the new rows, in whole shards).
obs is written whole; a second orientation (``X/csc``) is rebuilt by the out-of-core
transpose from the grown primary and its mirror record renewed. After verification the
sibling takes the store's place through apply's commit (:func:`annlayout.storage.commit.
replace`: one ``renameat2(RENAME_EXCHANGE)`` where the filesystem has it), so an interrupted
or failed append leaves the store exactly as it was, and a kill inside the commit is mended
by the next run (:func:`~annlayout.storage.commit.recover`).

A store on object storage (``s3://...``) is appended to the same way, with what object stores
have: the sibling is a hidden prefix, unchanged objects are server-side copies rather than
hard links, and the exchange is :func:`annlayout.storage.journal.commit` (the objects it replaces are
backed up first and restored after a failure, or by the next append after a kill).

The inputs' columns are aligned to the store's genes by name, as ``concat`` aligns them:
``join="inner"`` refuses an input that lacks some of the store's genes, ``join="outer"`` fills
them with implicit zeros (NaN in dense arrays); genes the store does not have are dropped and
counted in the result's notes. ``label``, ``keys`` and ``index_unique`` apply to the new cells
(the store's cells keep their names and their values of the label column).
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from annlayout.apply.stream import Progress, peak_rss
from annlayout.base.errors import AppendError, IntegrityError, NotAnnDataError
from annlayout.base.malloc import release_memory
from annlayout.base.options import Backend, CodecPipeline, RunOptions
from annlayout.combine.concat import (
    ORDER_KEY,
    Join,
    check_obsm_widths,
    check_unique_var,
    csr_blocks,
    dense_blocks,
    open_input,
    small_elements_of,
)
from annlayout.execute.tasks import Stores, TransposeTask, opened
from annlayout.format.encodings import (
    PROVENANCE_KEY,
    encoding_of,
    encoding_spec,
    json_attr,
    set_json_attr,
    writing,
)
from annlayout.format.registry import get
from annlayout.layout.spec import Layout
from annlayout.planning.memory import (
    MemoryPlan,
    compared_rows,
    dense_rows,
    grown_memory,
    plan_transpose,
    source_dtypes,
    span_of,
)
from annlayout.planning.plan import ElementPlan, make_plan
from annlayout.planning.survey import survey_opened
from annlayout.storage.commit import (
    check_interrupted,
    deferred_interrupts,
    recover,
    remove,
    replace,
)
from annlayout.storage.journal import commit, has_journal, roll_back
from annlayout.storage.pipeline import codec_pipeline
from annlayout.storage.remote import (
    chosen_backend,
    codec_pipeline_for,
    copy_objects,
    is_url,
    listing,
)
from annlayout.storage.remote import remove as remove_objects
from annlayout.storage.remote import store_backend as use_store_backend
from annlayout.storage.stores import (
    AnnDataStore,
    consolidate_metadata,
    detect_format,
    fingerprint,
    zarr_store,
)
from annlayout.verify.compare import (
    RowsOf,
    check_copy,
    difference,
    frame_values_difference,
    rows_difference,
)
from annlayout.write.callback import layout_callback
from annlayout.write.copies import copy_group, mirror_record, write_record
from annlayout.write.whole_chunks import WholeChunkWriter

APPEND_SUFFIX = ".annlayout-append"
METADATA_FILES = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


Location = Path | str  # a local store, or a URL


@dataclass
class AppendResult:
    path: Location
    layout: str
    n_obs_before: int
    n_obs_added: int
    seconds: float = 0.0
    linked_files: int = 0
    linked_bytes: int = 0  # kept as they were: hard links to the store's own files
    written_bytes: int = 0  # new files (shards from the last partial one on, obs, the copy)
    verified: bool = False
    verify_seconds: float = 0.0
    peak_rss: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "store": str(self.path),
            "layout": self.layout,
            "n_obs_before": self.n_obs_before,
            "n_obs_added": self.n_obs_added,
            "seconds": round(self.seconds, 3),
            "linked_files": self.linked_files,
            "linked_bytes": self.linked_bytes,
            "written_bytes": self.written_bytes,
            "verified": self.verified,
            "verify_seconds": round(self.verify_seconds, 3),
            "peak_rss": self.peak_rss,
            "notes": self.notes,
        }


@dataclass
class Growth:
    """One array of the store along the cells: kept up to ``boundary`` (the start of the
    shard, or chunk, that holds its last old row), written from there on."""

    path: str
    old_length: int
    unit: int

    @classmethod
    def of(cls, path: str, array: Any) -> Growth:
        """``array`` (the store's, at ``path``) in units of its shards, or chunks."""
        return cls(path, int(array.shape[0]), int((array.shards or array.chunks)[0]))

    @property
    def boundary(self) -> int:
        return self.old_length // self.unit * self.unit


def append(
    store: str | Path,
    inputs: Sequence[str | Path],
    *,
    join: Join = "inner",
    label: str | None = None,
    keys: Sequence[str] | None = None,
    index_unique: str | None = None,
    options: RunOptions | None = None,
    memory: str | int | None = None,
    verify: bool | None = None,
    codec_pipeline_name: CodecPipeline | None = None,
    store_backend: Backend | None = None,
    progress: Progress | None = None,
) -> AppendResult:
    """Add the cells of ``inputs`` to ``store`` (a zarr store annlayout wrote: a path or an
    ``s3://`` URL), keeping its recorded layout and genes. Atomic: the store changes only
    once the append is complete and verified; on object storage a kill while its objects
    are replaced is rolled back by the next append to it. ``options`` and the keywords after
    it: as :func:`annlayout.apply` takes them (an append runs in one process and is not
    resumed: it is atomic instead)."""
    options = RunOptions.merged(
        options, memory=memory, verify=verify, codec_pipeline=codec_pipeline_name,
        store_backend=store_backend, progress=progress,
    )  # fmt: skip
    if options.workers != 1 or options.scheduler or options.resume:
        given = "--workers" if options.workers != 1 else "--scheduler"
        raise AppendError(
            f"append: {'--resume' if options.resume else given} is not an option of append "
            "(it runs in one process, and is atomic rather than resumed)"
        )
    with use_store_backend(options.store_backend):
        return _append(
            store, inputs, join=join, label=label, keys=keys, index_unique=index_unique,
            options=options,
        )  # fmt: skip


def _append(
    store: str | Path,
    inputs: Sequence[str | Path],
    *,
    join: Join,
    label: str | None,
    keys: Sequence[str] | None,
    index_unique: str | None,
    options: RunOptions,
) -> AppendResult:
    import anndata as ad
    import zarr

    budget, verify, progress = options.budget, options.verify, options.progress
    start = time.perf_counter()
    if not inputs:
        raise AppendError("append: no inputs given")
    if keys is not None and len(keys) != len(inputs):
        raise AppendError(f"--keys: {len(keys)} keys for {len(inputs)} inputs")
    notes: list[str] = []
    store = _location(store)
    if isinstance(store, str):
        undone = roll_back(store)  # an append killed while it replaced the store's objects
        if undone == "restored":
            notes.append(f"{store}: an append that was cut short was rolled back first")
        elif undone == "finished":
            notes.append(f"{store}: an earlier append had finished; its journal was cleared")
    else:
        mended = recover(store)  # an append killed while it replaced the store
        if mended:
            notes.append(mended)
    planned = _planned(store, inputs, join, budget, notes)  # before any data is read
    layout, record, root, n_vars = planned.layout, planned.record, planned.root, planned.n_vars
    datasets, sources, maps = planned.datasets, planned.sources, planned.maps
    matrices, raw = planned.matrices, planned.raw
    fingerprint = _fingerprint(inputs, join=join, label=label, keys=keys, index_unique=index_unique)
    for earlier in record.get("appended", []):  # a rerun after a kill past the exchange
        if earlier.get("fingerprint") == fingerprint:
            raise AppendError(
                f"{store}: these inputs were already appended ({earlier.get('n_obs')} cells); "
                "nothing written"
            )
    light = [small_elements_of(data) for data in datasets]
    check_obsm_widths(datasets, light)
    obsm = _obsm_rows(store, root, datasets, light)
    obs, n_old = _combined_obs(root, light, label, keys, index_unique)
    del light
    n_new = len(obs) - n_old

    result = AppendResult(path=store, layout=layout.name, n_obs_before=n_old, n_obs_added=n_new)
    if "uns" in root and ORDER_KEY in root["uns"]:  # kept as it is: it maps concat's rows
        notes.append(
            f"uns[{ORDER_KEY!r}] describes the first {n_old:,} cells, in the order concat gave "
            f"them; the {n_new:,} appended cells follow, in their inputs' order"
        )
    result.notes = notes
    growths = _growths(root, matrices, raw, obsm)
    rebuilt = [copy.name.strip("/") for path in _sparse_paths(root, matrices, raw)
               if (copy := copy_group(root[path])) is not None]  # fmt: skip
    tmp = _sibling(store)
    _remove(tmp)  # left by a run that was killed
    pipeline = codec_pipeline_for(options.codec_pipeline, store)
    with deferred_interrupts():
        try:
            linked = _link_tree(root, store, tmp, growths, skipped=["obs"], emptied=rebuilt)
            result.linked_files, result.linked_bytes = len(linked), sum(linked.values())
            # not through the copied consolidated metadata: it holds the old shapes
            target = zarr.open_group(
                zarr_store(tmp, read_only=False), mode="r+", use_consolidated=False
            )
            set_json_attr(target, PROVENANCE_KEY, {**record, "complete": False})
            with codec_pipeline(pipeline), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # obs names repeated: as anndata.concat warns
                with writing():  # first: the survey of the grown store reads it
                    ad.experimental.write_dispatched(
                        target, "obs", obs, callback=layout_callback(layout)
                    )
                for path, present in matrices.items():
                    _grow_matrix(
                        root, target, layout, path, present, maps, n_vars, budget, progress,
                        sources,
                    )  # fmt: skip
                if raw is not None:
                    _grow_matrix(
                        root, target, layout, "raw/X", raw[0], raw[1], raw[2], budget,
                        progress, sources,
                    )  # fmt: skip
                for key, values in obsm.items():
                    _grow_rows(root, target, f"obsm/{key}", iter([values]), budget)
                check_interrupted()
                _rebuild_copies(tmp, target, layout, rebuilt, budget, progress)
            appended = {"inputs": [str(p) for p in inputs], "n_obs": n_new,
                        "fingerprint": fingerprint}  # fmt: skip
            done = {**record, "complete": True,
                    "appended": [*record.get("appended", []), appended]}  # fmt: skip
            set_json_attr(target, PROVENANCE_KEY, done)
            if layout.target.consolidate_metadata:
                consolidate_metadata(tmp, layout.target.zarr_format)
            if verify:
                started = time.perf_counter()
                with codec_pipeline(pipeline):
                    problems = _verify(store, tmp, growths, datasets, obsm, obs, n_old, budget)
                result.verify_seconds = time.perf_counter() - started
                if problems:
                    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                    raise IntegrityError(
                        f"{store}: verification failed, store left as it was: {problems[0]}{more}"
                    )
                result.verified = True
            result.written_bytes = _new_bytes(tmp, linked)
            check_interrupted()
            if isinstance(store, Path) and isinstance(tmp, Path):
                replace(tmp, store)  # apply's commit: one exchange where the system has it
            else:
                _commit(str(tmp), str(store), linked)
        except BaseException:
            _remove(tmp)
            raise
        _remove(tmp)
    result.seconds = time.perf_counter() - start
    result.peak_rss = peak_rss()
    return result


def append_plan(
    store: str | Path,
    inputs: Sequence[str | Path],
    *,
    join: Join = "inner",
    options: RunOptions | None = None,
    memory: str | int | None = None,
) -> MemoryPlan:
    """The memory model :func:`append` checks before it reads any data: the store's elements
    that grow, at their grown size within the budget, from metadata only; refused (in the
    line append gives) where append would refuse. Writes nothing, and leaves an append that
    was cut short for the next append to recover."""
    options = RunOptions.merged(options, memory=memory)
    if not inputs:
        raise AppendError("append: no inputs given")
    with use_store_backend(options.store_backend):
        return _planned(_location(store), inputs, join, options.budget, []).memory


def _location(store: str | Path) -> Location:
    """An object-store prefix without its trailing slash, or the local store itself (a link
    to a store: the store is swapped, not the link)."""
    if not is_url(store):
        return Path(store).resolve()
    store = str(store).rstrip("/")
    if "/" not in store.partition("://")[2].strip("/"):
        raise AppendError(f"{store}: a whole bucket; append works on a store under a prefix")
    return store


@dataclass
class _Planned:
    """What append knows before reading any data: the store's recorded layout, the inputs
    opened and mapped onto its genes, and the memory model of growing it."""

    layout: Layout
    record: dict[str, Any]
    root: Any
    n_vars: int
    datasets: list[Any]
    sources: list[Any]
    maps: list[np.ndarray]
    matrices: dict[str, list[Any]]
    raw: tuple[list[Any], list[np.ndarray], int] | None
    memory: MemoryPlan


def _planned(
    store: Location, inputs: Sequence[str | Path], join: Join, budget: int, notes: list[str]
) -> _Planned:
    import zarr

    layout, record = _recorded_layout(store)
    root: Any = zarr.open_group(zarr_store(store), mode="r")
    var_names = _index(root["var"])
    datasets = [open_input(path) for path in inputs]
    check_unique_var(datasets)
    sources = [data.source for data in datasets]
    maps = _gene_maps(store, var_names, sources, [d.var.index for d in datasets], join, notes)
    matrices = _matrices(store, root, datasets)
    raw = None
    if "raw" in root and "X" in root["raw"]:
        raw = _raw_inputs(store, root, datasets, join, notes)
    memory = _memory_model(root, layout, datasets, matrices, raw, budget)
    memory.check(AppendError)
    return _Planned(layout, record, root, len(var_names), datasets, sources, maps, matrices,
                    raw, memory)  # fmt: skip


# --------------------------------------------------------------------------- the store


def _recorded_layout(store: Location) -> tuple[Layout, dict[str, Any]]:
    """The layout the store was written with, from its provenance: append keeps it."""
    import zarr

    if isinstance(store, Path) and not store.exists():
        raise AppendError(f"{store}: no such store")
    try:
        found = detect_format(store)
    except NotAnnDataError as err:
        raise AppendError(str(err)) from None
    if found != "zarr":
        raise AppendError(f"{store}: append works on zarr stores; this is an h5ad file")
    root: Any = zarr.open_group(zarr_store(store), mode="r")
    record = json_attr(root, PROVENANCE_KEY)
    if not isinstance(record, dict) or "resolved_layout" not in record:
        raise AppendError(
            f"{store}: not a store annlayout wrote (no layout recorded); append keeps a "
            "store's layout: write it with annlayout apply or concat first"
        )
    if record.get("complete") is not True:
        raise AppendError(f"{store}: an incomplete annlayout store; apply it again first")
    try:
        layout = Layout.model_validate(record["resolved_layout"])
    except Exception as err:
        first = str(err).splitlines()[0]
        raise AppendError(f"{store}: its recorded layout cannot be read: {first}") from None
    return layout, record


def _index(frame_group: Any) -> Any:
    import pandas as pd
    from anndata.io import read_elem

    name = frame_group.attrs.get("_index", "_index")
    return pd.Index(read_elem(frame_group[name]))


def _gene_maps(
    store: Location,
    var_names: Any,
    sources: list[str],
    genes: list[Any],
    join: Join,
    notes: list[str],
) -> list[np.ndarray]:
    """Each input's columns on the store's genes; an inner join refuses missing genes."""
    from annlayout.combine.collection import column_maps

    maps = column_maps(var_names, genes)
    for source, column_map in zip(sources, maps, strict=True):
        covered = np.zeros(len(var_names), dtype=bool)
        covered[column_map[column_map >= 0]] = True
        if not covered.all() and join == "inner":
            missing = var_names[~covered]
            raise AppendError(
                f"{source}: lacks {missing.size:,} of the {len(var_names):,} genes of "
                f"{store} (e.g. {missing[0]!r}); --join outer fills them with zeros"
            )
        dropped = int((column_map < 0).sum())
        if dropped and dropped == column_map.size and len(var_names):
            raise AppendError(
                f"{source}: shares none of its {dropped:,} genes with the {len(var_names):,} "
                f"of {store} (e.g. {genes[sources.index(source)][0]!r}): its cells would be "
                "all zeros; is it the right file, with the same gene ids?"
            )
        if dropped:
            notes.append(f"{source}: {dropped:,} genes the store does not have were dropped")
    return maps


def _matrices(store: Location, root: Any, datasets: list[Any]) -> dict[str, list[Any]]:
    """X and the store's layers, from every input: an input without one of them is refused
    (the store's cells would have it and the new ones not)."""
    paths = (["X"] if "X" in root else []) + [
        f"layers/{key}" for key in (sorted(root["layers"]) if "layers" in root else [])
    ]
    found: dict[str, list[Any]] = {}
    for path in paths:
        _check_appendable(store, root, path)
        present = []
        for data in datasets:
            matrix = data.X if path == "X" else data.layers.get(path.split("/", 1)[1])
            if matrix is None:
                raise AppendError(f"{data.source}: has no {path}, which {store} has")
            present.append(matrix)
        found[path] = present
    if "obsp" in root and len(root["obsp"]):
        key = next(iter(root["obsp"]))
        raise AppendError(
            f"{store}: obsp[{key!r}] is cells x cells and cannot grow by rows; remove obsp or "
            "use annlayout concat"
        )
    return found


def _check_appendable(store: Location, root: Any, path: str) -> None:
    node = root[path]
    encoding = encoding_of(node) or "array"
    spec = get(encoding)
    if spec is not None and spec.matrix and not spec.by_rows:
        raise AppendError(
            f"{store}: {path} is stored CSC first, so every column changes with new cells; "
            "use annlayout concat"
        )
    if spec is None or not spec.by_rows:
        raise AppendError(f"{store}: {path} is stored as {encoding}; append grows arrays and CSR")


def _raw_inputs(
    store: Location, root: Any, datasets: list[Any], join: Join, notes: list[str]
) -> tuple[list[Any], list[np.ndarray], int]:
    """raw's X of every input on the store's raw genes."""
    _check_appendable(store, root, "raw/X")
    raws = []
    for data in datasets:
        if data.raw is None:
            raise AppendError(f"{data.source}: has no raw, which {store} has")
        raws.append(data.raw)
    var_names = _index(root["raw/var"])
    sources = [f"{data.source} (raw)" for data in datasets]
    genes = [raw.var.index for raw in raws]
    maps = _gene_maps(store, var_names, sources, genes, join, notes)
    return [raw.X for raw in raws], maps, len(var_names)


def _obsm_rows(
    store: Location, root: Any, datasets: list[Any], light: list[Any]
) -> dict[str, np.ndarray]:
    """The new rows of each of the store's obsm arrays, from every input."""
    found: dict[str, np.ndarray] = {}
    if "obsm" not in root:
        return found
    for key in sorted(root["obsm"]):
        node = root["obsm"][key]
        spec = get(encoding_of(node) or "array")
        if spec is None or not spec.dense:
            raise AppendError(
                f"{store}: obsm[{key!r}] is stored as {encoding_of(node)}; append grows arrays only"
            )
        parts = []
        for data, part in zip(datasets, light, strict=True):
            if key not in part.obsm:
                raise AppendError(f"{data.source}: has no obsm[{key!r}], which {store} has")
            value = part.obsm[key]
            value = value.toarray() if sp.issparse(value) else np.asarray(value)
            if value.shape[1:] != node.shape[1:]:
                raise AppendError(
                    f"obsm[{key!r}] is {node.shape[1:]} wide in {store} but "
                    f"{value.shape[1:]} in {data.source}: the columns do not line up"
                )
            parts.append(value)
        found[key] = np.concatenate(parts).astype(node.dtype, copy=False)
    return found


def _combined_obs(
    root: Any, light: list[Any], label: str | None, keys: Any, index_unique: str | None
) -> tuple[Any, int]:
    """The store's obs and the new cells' after it (and the store's number of cells), columns combined as anndata.concat
    combines them (categories unioned, absent values missing)."""
    import anndata as ad
    from anndata.io import read_elem

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = ad.concat(
            [ad.AnnData(obs=part.obs) for part in light], join="outer", label=label, keys=keys,
            index_unique=index_unique,
        )  # fmt: skip
        old = ad.AnnData(obs=read_elem(root["obs"]))
        return ad.concat([old, new], join="outer").obs, old.n_obs


def _memory_model(
    root: Any,
    layout: Layout,
    datasets: list[Any],
    matrices: dict[str, list[Any]],
    raw: tuple[list[Any], list[np.ndarray], int] | None,
    budget: int,
) -> MemoryPlan:
    """The store's elements that grow, planned at their grown size within ``budget`` as
    apply plans (:func:`~annlayout.planning.memory.grown_memory`), from metadata only: what
    holds a shard or a second orientation that cannot fit is a violation, which
    :func:`_planned` refuses in one line before any input is read."""
    n_new = sum(int(data.shape[0]) for data in datasets)
    added = {path: (n_new, sum(m.nnz for m in present)) for path, present in matrices.items()}
    if raw is not None:
        added["raw/X"] = (n_new, sum(m.nnz for m in raw[0]))
    if "obsm" in root:
        added.update({f"obsm/{key}": (n_new, 0) for key in root["obsm"]})
    survey = survey_opened(AnnDataStore(location="", format="zarr", root=root, provenance=None))
    return grown_memory(make_plan(layout, survey), source_dtypes(survey), budget, added)


def _growths(
    root: Any, matrices: dict[str, list[Any]], raw: Any, obsm: dict[str, np.ndarray]
) -> list[Growth]:
    """Every array of the store along the cells (sparse primaries' parts, dense matrices,
    obsm), with where its rewrite starts."""
    sparse = _sparse_paths(root, matrices, raw)
    arrays = [f"{path}/{name}" for path in sparse for name in ("data", "indices", "indptr")]
    arrays += [p for p in [*matrices, *(["raw/X"] if raw else [])] if p not in sparse]
    arrays += [f"obsm/{key}" for key in obsm]
    return [Growth.of(path, root[path]) for path in arrays]


def _sparse_paths(root: Any, matrices: dict[str, list[Any]], raw: Any) -> list[str]:
    """The matrices the store holds as CSR (the others are dense arrays)."""
    paths = [*matrices, *(["raw/X"] if raw is not None else [])]
    return [path for path in paths if encoding_spec(root[path], path).sparse]


# --------------------------------------------------------------------------- the new store


def _link_tree(
    root: Any,
    store: Location,
    tmp: Location,
    growths: list[Growth],
    *,
    skipped: list[str],
    emptied: list[str],
) -> dict[str, int]:
    """The store's objects in ``tmp``: those that stay the same as hard links (server-side
    copies on object storage), metadata copied (zarr rewrites it), nothing of ``skipped``
    groups, only the metadata of ``emptied`` ones, and of each growing array its shards
    before the boundary. Returns the kept objects (name -> size)."""
    kept = {growth.path: set(_keys_before(root[growth.path], growth)) for growth in growths}
    sizes = listing(store) if isinstance(store, str) else _files(store)
    linked: dict[str, int] = {}
    metadata: list[str] = []
    for name, size in sizes.items():
        directory, _, base = name.rpartition("/")
        if _under(directory, skipped):
            continue
        if base in METADATA_FILES:
            metadata.append(name)
            continue
        if _under(directory, emptied):
            continue
        owner = _owning_array(directory, kept)
        if owner is not None and name[len(owner) + 1 :] not in kept[owner]:
            continue
        linked[name] = size
    if isinstance(store, str):
        copy_objects(store, str(tmp), [*linked, *metadata])
        return linked
    assert isinstance(store, Path) and isinstance(tmp, Path)
    for name in [*linked, *metadata]:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        if name in linked:
            os.link(store / name, tmp / name)
        else:  # a copy: zarr rewrites metadata files in place
            shutil.copy2(store / name, tmp / name)
    return linked


def _files(directory: Path) -> dict[str, int]:
    """name (relative, with /) -> size of every file under ``directory``."""
    found = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            path = Path(parent) / name
            found[path.relative_to(directory).as_posix()] = path.stat().st_size
    return found


def _under(directory: str, groups: list[str]) -> bool:
    return any(directory == g or directory.startswith(f"{g}/") for g in groups)


def _keys_before(array: Any, growth: Growth) -> Iterator[str]:
    """The stored keys of ``array``'s shards (chunks) that lie wholly before the boundary."""
    import itertools

    n_before = growth.boundary // growth.unit
    shape = array.shape
    units = array.shards or array.chunks
    others = [range(-(-n // u)) for n, u in zip(shape[1:], units[1:], strict=True)]
    for first in range(n_before):
        for tail in itertools.product(*others):
            yield array.metadata.encode_chunk_key((first, *tail))


def _owning_array(rel: str, kept: dict[str, set[str]]) -> str | None:
    for path in kept:
        if rel == path or rel.startswith(f"{path}/"):
            return path
    return None


def _grow_matrix(
    root: Any,
    target: Any,
    layout: Layout,
    path: str,
    present: list[Any],
    maps: list[np.ndarray],
    n_vars: int,
    budget: int,
    progress: Progress | None,
    sources: list[str],
) -> None:
    """The new rows of one matrix written after the store's: a CSR matrix's data, indices
    and indptr, or a dense array's rows."""
    node = root[path]
    dense = encoding_spec(node, path).dense
    stored = np.dtype(node.dtype if dense else node["data"].dtype)
    for source, matrix, column_map in zip(sources, present, maps, strict=True):
        if not np.can_cast(matrix.dtype, stored, "same_kind"):
            raise AppendError(
                f"{source}: {path} holds {matrix.dtype}, which the store's {stored} cannot "
                "hold without changing values"
            )
        covered = np.zeros(n_vars, dtype=bool)
        covered[column_map[column_map >= 0]] = True
        if dense and stored.kind != "f" and not covered.all():
            raise AppendError(
                f"{source}: lacks genes of the store, which a dense {stored} {path} cannot "
                "fill with NaN"
            )
    if dense:
        rows = dense_rows(n_vars, node.dtype.itemsize, budget)
        blocks = (block for _, block in dense_blocks(present, maps, n_vars, node.dtype, rows))
        _grow_rows(root, target, path, blocks, budget)
        return
    writers = {
        name: _writer(root, target, f"{path}/{name}", budget) for name in ("data", "indices")
    }
    offsets = [np.zeros(0, dtype=np.int64)]  # the new rows' ends: 8 bytes a cell, kept
    offset = int(node["data"].shape[0])
    sparse = csr_blocks(present, maps, budget, path, progress)
    for _, ptr, idx, val in sparse:
        check_interrupted()
        val = val.astype(writers["data"].dtype, copy=False)
        idx = idx.astype(writers["indices"].dtype, copy=False)
        writers["data"].write(val)
        writers["indices"].write(idx)
        offsets.append(ptr[1:].astype(np.int64) + offset)
        offset += int(ptr[-1])
        release_memory()
    for writer in writers.values():
        writer.close()
    new_offsets = np.concatenate(offsets)
    stored = np.dtype(node["indptr"].dtype)
    if offset <= np.iinfo(stored).max:
        _grow_rows(root, target, f"{path}/indptr", iter([new_offsets]), budget)
    else:  # the offsets outgrew the stored dtype: the layout's choice for the grown matrix
        _replan_indptr(root, target, layout, path, new_offsets)
    group = target[path]
    group.attrs["shape"] = [int(node.attrs["shape"][0]) + new_offsets.size, int(n_vars)]


def _grown_plans(layout: Layout, root: Any) -> dict[str, ElementPlan]:
    """The layout's plan of the store as grown so far (metadata only): what a fresh apply of
    the grown store would write."""
    survey = survey_opened(AnnDataStore(location="", format="zarr", root=root, provenance=None))
    return {element.path: element for element in make_plan(layout, survey).elements}


def _replan_indptr(
    root: Any, target: Any, layout: Layout, path: str, new_offsets: np.ndarray
) -> None:
    """indptr written whole again, as the layout plans it for the grown matrix (an index
    dtype of ``minimal`` picks a wider one once the nonzeros pass its range)."""
    from annlayout.write.arrays import backend_of, create_array

    group = target[path]
    element = _grown_plans(layout, target)[path]
    n_rows = int(root[path]["indptr"].shape[0]) - 1 + new_offsets.size
    planned = element.parts("csr")["indptr"].model_copy(update={"shape": (n_rows + 1,)})
    values = np.concatenate([root[path]["indptr"][...].astype(np.int64), new_offsets])
    if values[-1] > np.iinfo(np.dtype(planned.dtype)).max:
        raise AppendError(f"{path}/indptr: {values[-1]:,} nonzeros do not fit {planned.dtype}")
    del group["indptr"]
    create_array(group, "indptr", values.astype(planned.dtype), planned, backend_of(group))


def _writer(root: Any, target: Any, path: str, budget: int) -> WholeChunkWriter:
    """A writer appending to ``path`` in ``target``, from the boundary :func:`_link_tree`
    kept up to (:class:`Growth`): the old tail from the store first."""
    old = root[path]
    array = target[path]
    growth = Growth.of(path, old)
    unit_bytes = growth.unit * int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
    span = span_of(growth.unit, unit_bytes, array.shards is not None, budget)
    writer = WholeChunkWriter(
        array, growth.unit, array.dtype, position=growth.boundary, grow=True, span=span
    )
    if growth.old_length > growth.boundary:
        writer.write(old[growth.boundary :])
    return writer


def _grow_rows(
    root: Any, target: Any, path: str, blocks: Iterator[np.ndarray], budget: int
) -> None:
    writer = _writer(root, target, path, budget)
    for block in blocks:
        check_interrupted()
        writer.write(block.astype(writer.dtype, copy=False))
    writer.close()


def _rebuild_copies(
    tmp: Location, target: Any, layout: Layout, copies: list[str], budget: int, progress: Any
) -> None:
    """Each second orientation built again from its grown primary (out of core), with its
    mirror record."""
    import zarr

    from annlayout.write.arrays import backend_of, create_array

    if not copies:
        return
    read = zarr.open_group(zarr_store(tmp), mode="r", use_consolidated=False)
    plans = _grown_plans(layout, read)
    location = str(tmp)
    backend = chosen_backend() if isinstance(tmp, str) else None
    stores = Stores(location, location, codec_pipeline_for("zarrs", location), backend)
    for number, group in enumerate(copies):
        element, _, orientation = group.rpartition("/")
        plan = plans[element]
        arrays = plan.parts(orientation)
        primary = target[element]
        nnz = int(primary["data"].shape[0])
        copy = target[group]
        for name in ("data", "indices", "indptr"):  # as the grown matrix plans them: a
            del copy[name]  # minimal index dtype widens once the cells pass its range
            create_array(copy, name, None, arrays[name], backend_of(target))
        item = int(primary["data"].dtype.itemsize)
        transpose = plan_transpose(plan, orientation, arrays, item, budget, group)
        if transpose.problem:
            raise AppendError(transpose.problem)
        with opened(stores, read, target):
            TransposeTask(transpose, stores).run()
        copy.attrs["shape"] = list(primary.attrs["shape"])
        primary_orientation = "csr" if orientation == "csc" else "csc"
        record = mirror_record(
            tuple(primary.attrs["shape"]), nnz, primary["indptr"][...], primary_orientation
        )
        write_record(copy, record)
        if progress:
            progress(f"rebuilding {group}", number + 1, len(copies))


def _commit(tmp: str, store: str, linked: dict[str, int]) -> None:
    """The appended store in place of the old one on object storage (journaled: see
    :mod:`annlayout.storage.journal`); a failure that cannot be undone says how to finish it."""
    try:
        commit(tmp, store, linked, between=check_interrupted)
    except Exception as err:
        if has_journal(store):
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise AppendError(
                f"{store}: the append failed while it replaced objects and could not be undone "
                f"({first}); run annlayout append again to restore the store"
            ) from err
        raise


def _sibling(store: Location) -> Location:
    """Where the appended store is built: a hidden sibling of the store."""
    if isinstance(store, Path):
        return store.with_name(f".{store.name}{APPEND_SUFFIX}")
    parent, _, name = store.rpartition("/")
    return f"{parent}/.{name}{APPEND_SUFFIX}"


def _remove(location: Location) -> None:
    if isinstance(location, Path):
        remove(location)
    else:
        remove_objects(location)


def _new_bytes(tmp: Location, linked: dict[str, int]) -> int:
    """Bytes in objects that are not the old store's own."""
    sizes = listing(tmp) if isinstance(tmp, str) else _files(tmp)
    return sum(size for name, size in sizes.items() if name not in linked)


def _fingerprint(inputs: Sequence[str | Path], **options: Any) -> str:
    """concat's fingerprint of the inputs (size, mtime, options) with paths resolved, as a
    short digest for the provenance record."""
    located = [path if is_url(path) else Path(path).resolve() for path in inputs]
    return fingerprint(located, **options)


# --------------------------------------------------------------------------- verification


def _verify(
    store: Location,
    tmp: Location,
    growths: list[Growth],
    datasets: list[Any],
    obsm: dict[str, np.ndarray],
    obs: Any,
    n_old: int,
    budget: int,
) -> list[str]:
    """The appended store read back: each growing array's rewritten old rows equal the
    store's (the shards before them are the store's own files); each matrix's new rows hold
    the inputs' rows on the store's genes (found here by name, not through the maps the
    rows were written with), read from the inputs again
    (:func:`~annlayout.verify.compare.rows_difference`); obsm's new rows equal the inputs';
    obs equals the combined obs; and every second orientation mirrors its primary."""
    import zarr
    from anndata.io import read_elem

    old: Any = zarr.open_group(zarr_store(store), mode="r")
    new: Any = zarr.open_group(zarr_store(tmp), mode="r")
    problems: list[str] = []
    for growth in growths:
        a, b = old[growth.path], new[growth.path]
        row_bytes = int(np.prod(a.shape[1:], dtype=np.int64)) * a.dtype.itemsize
        step = compared_rows(row_bytes, budget)
        for start in range(growth.boundary, growth.old_length, step):
            stop = min(growth.old_length, start + step)
            if not np.array_equal(a[start:stop], b[start:stop], equal_nan=a.dtype.kind == "f"):
                problems.append(f"{growth.path}[{start}:{stop}]: differs from the store's")
                break
    var_names = _index(new["var"])
    matrices = [("X", [d.X for d in datasets], var_names, [d.var.index for d in datasets])]
    matrices += [(f"layers/{key}", [d.layers[key] for d in datasets], var_names,
                  [d.var.index for d in datasets]) for key in sorted(new.get("layers", {}))]  # fmt: skip
    if "raw" in new and "X" in new["raw"]:
        raws = [d.raw for d in datasets]
        matrices.append(("raw/X", [r.X for r in raws], _index(new["raw/var"]),
                         [r.var.index for r in raws]))  # fmt: skip
    checked = []
    for path, present, names, genes in matrices:
        if path not in new:
            continue
        parts = [RowsOf(d.source, m, names.get_indexer(g))
                 for d, m, g in zip(datasets, present, genes, strict=True)]  # fmt: skip
        problem = rows_difference(path, new[path], parts, budget, start=n_old)
        if problem:
            problems.append(problem)
        checked.append(path)
    for key, values in obsm.items():
        problem = difference(values, np.asarray(new["obsm"][key][n_old:]))
        if problem:
            problems.append(f"obsm/{key}: the new rows: {problem}")
    found = frame_values_difference(obs, read_elem(new["obs"]))
    if found:
        problems.append(f"obs: {found}")
    for path in checked:
        if encoding_spec(new[path], path).sparse:  # CSR: appendable ones are
            problems += check_copy(path, new[path], budget)
    return problems
