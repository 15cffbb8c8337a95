"""``annlayout concat``: many AnnData stores into one store written with a layout.

It assembles the inputs into an intermediate store in a scratch directory, streaming
X and the layers every input has in row blocks (columns moved onto the result's genes on the
way), then applies the layout to it with :func:`annlayout.apply.apply`, which brings
sharding, second orientations, verification and the atomic (or uploaded) result. obs, var,
obsm and uns are what ``anndata.concat`` makes of the inputs' small elements with the same
options, so the result equals ``anndata.concat`` of the inputs read into memory.

With ``shuffle`` or ``groupby`` the rows are put in a new order on the way: the small elements
in memory, the matrices through :class:`~annlayout.combine.buckets.RowBuckets` (a two-pass
bucketed shuffle). The order is kept in ``uns["annlayout_order"]``: ``source_row[i]`` is the
row of ``anndata.concat``'s result that row ``i`` holds.
"""

from __future__ import annotations

import contextvars
import hashlib
import io
import json
import signal
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from annlayout.apply.stream import ApplyResult, Progress, apply, parse_size, task_location
from annlayout.base.defaults import WHOLE_BELOW
from annlayout.base.errors import AnnlayoutError, ConcatError, IntegrityError, NotAnnDataError
from annlayout.base.options import Backend, CodecPipeline, RunOptions
from annlayout.combine.assembly import Source, assemble_sparse
from annlayout.combine.buckets import RowBuckets, equal_edges
from annlayout.combine.collection import (
    column_maps,
    grouped,
    input_blocks,
    is_monotonic,
    mixing,
    remap_rows,
    shuffled,
)
from annlayout.execute.tasks import Distributed, Executor, check_reachable, executor_for
from annlayout.format.encodings import encoding_attrs, writing
from annlayout.layout.spec import load_layout
from annlayout.planning.memory import (
    READ_AHEAD,
    MemoryPlan,
    checkpoint_bytes,
    dense_rows,
    input_block_budget,
    plan_within_budget,
    rows_per_block,
    span_of,
)
from annlayout.planning.plan import Plan, human_size
from annlayout.planning.survey import Survey, array_info, survey_adata
from annlayout.planning.survey_models import ElementInfo
from annlayout.reading.reader import Dataset, Matrix
from annlayout.reading.reader import open as open_dataset
from annlayout.storage import scratch
from annlayout.storage.commit import (
    Interrupted,
    check_interrupted,
    check_paths,
    deferred_interrupts,
)
from annlayout.storage.pipeline import codec_pipeline
from annlayout.storage.remote import chosen_backend, codec_pipeline_for, is_url
from annlayout.storage.remote import store_backend as use_store_backend
from annlayout.storage.stores import check_output_name, footprint
from annlayout.storage.stores import fingerprint as inputs_fingerprint
from annlayout.verify.compare import RowsOf, frame_values_difference, rows_difference
from annlayout.write.whole_chunks import WholeChunkWriter

Join = Literal["inner", "outer"]
Merge = Literal["same", "unique", "first", "only"] | None
SCRATCH_CHUNK = 2**20  # values per chunk of the intermediate arrays (uncompressed)
# indptr grows by a block's rows at a time, and each append rewrites its last chunk: smaller
INDPTR_CHUNK = 2**16
SCRATCH_SUFFIX = ".annlayout-concat"
ASSEMBLED_MARKER = "assembled.done"  # the combined inputs are complete: --resume uses them
ORDER_KEY = "annlayout_order"
MIXING_WINDOW = 256  # cells: a minibatch read as one contiguous run


@dataclass
class ConcatResult(ApplyResult):
    """What :func:`apply` reports, and how well the cells' sources are mixed: mean entropy
    (bits) of the input labels in windows of :data:`MIXING_WINDOW` rows, as written and as a
    uniform random permutation would give (``None`` for a single input)."""

    mixing: tuple[float, float] | None = None
    inputs: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        mixed = None
        if self.mixing is not None:
            mixed = {"bits": round(self.mixing[0], 4), "uniform": round(self.mixing[1], 4),
                     "window": MIXING_WINDOW}  # fmt: skip
        return {**super().summary(), "inputs": self.inputs, "mixing": mixed}


def concat(
    layout: Any,
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    join: Join = "inner",
    label: str | None = None,
    keys: Sequence[str] | None = None,
    index_unique: str | None = None,
    merge: Merge = None,
    shuffle: int | None = None,
    groupby: str | None = None,
    overwrite: bool = False,
    scratch_at: str | Path | None = None,
    options: RunOptions | None = None,
    memory: str | int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    verify: bool | None = None,
    resume: bool | None = None,
    codec_pipeline_name: CodecPipeline | None = None,
    store_backend: Backend | None = None,
    progress: Progress | None = None,
) -> ConcatResult:
    """Combine ``inputs`` into ``output`` with ``layout``, as ``anndata.concat(inputs, join=,
    label=, keys=, index_unique=, merge=, uns_merge=merge)`` would, out of core.

    ``shuffle=SEED`` permutes the cells at random (reproducibly), ``groupby=COLUMN`` orders
    them by an obs column of the result; the order is recorded in ``uns["annlayout_order"]``.
    ``workers``/``scheduler``: combining the inputs (sparse matrices: scatter and gather tasks,
    :mod:`annlayout.combine.assembly`) and the layout's block copies and transposes run as dask tasks
    (threads, or a dask.distributed cluster whose workers reach the inputs, the output and
    the scratch). ``scratch_at``: where the combined inputs and the tasks' files go
    (:func:`scratch_location`; with a ``scheduler``, a place every worker reaches, which is
    checked from a worker before any work, as the inputs and the output are).
    ``resume``: a run that was killed continues
    (when the inputs and options are the same) from what it recorded beside the output: the
    rows it combined, or the combined inputs and the layout's blocks it completed; otherwise
    it starts clean, as without ``resume``. ``options`` and the keywords after it: as
    :func:`annlayout.apply` takes them.
    """
    options = RunOptions.merged(
        options, memory=memory, workers=workers, scheduler=scheduler, verify=verify,
        resume=resume, codec_pipeline=codec_pipeline_name, store_backend=store_backend,
        progress=progress,
    )  # fmt: skip
    with use_store_backend(options.store_backend):
        return _concat(
            layout, inputs, output, join=join, label=label, keys=keys,
            index_unique=index_unique, merge=merge, shuffle=shuffle, groupby=groupby,
            overwrite=overwrite, scratch_at=scratch_at, options=options,
        )  # fmt: skip


def _concat(
    layout: Any,
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    join: Join,
    label: str | None,
    keys: Sequence[str] | None,
    index_unique: str | None,
    merge: Merge,
    shuffle: int | None,
    groupby: str | None,
    overwrite: bool,
    scratch_at: str | Path | None,
    options: RunOptions,
) -> ConcatResult:
    budget, workers, scheduler = options.budget, options.workers, options.scheduler
    progress, resume = options.progress, options.resume
    start = time.perf_counter()
    layout = load_layout(layout)
    check_output_name(output, layout.target.format, layout.name)
    _check_arguments(inputs, keys, shuffle, groupby)
    if not is_url(output):  # before the inputs are combined, not after
        for path in inputs:
            if not is_url(path):
                check_paths(Path(path), Path(output), overwrite=overwrite)
    location = scratch_location(output, scratch_at, bool(scheduler))
    dask = _on_dask(workers, scheduler, inputs)
    if is_url(location) and dask is None:
        raise ConcatError(
            f"--scratch {scratch_at}: object storage holds the scratch of runs on dask "
            "(--workers N or --scheduler); one process combines the inputs on a local disk"
        )
    # before any input is read: a path the workers cannot see fails fast
    if dask is not None and isinstance(dask.executor, Distributed):
        check_reachable(dask.executor.address, [*map(str, inputs)], str(output), location)
    met = _combined_metadata(inputs, join=join, label=label, keys=keys,
                             index_unique=index_unique, merge=merge, shuffle=shuffle,
                             groupby=groupby)  # fmt: skip
    if met.repeated:
        warnings.warn(met.repeated, UserWarning, stacklevel=2)  # as anndata.concat warns
    # the layout step planned and refused now, as apply would, before any input is combined
    _planned(layout, met, options)
    datasets, combined, matrices, raw = met.datasets, met.combined, met.matrices, met.raw
    repeated, order, sources, maps = met.repeated, met.order, met.sources, met.maps
    del met  # combined, raw and matrices are let go of below, before the layout step
    fingerprint = inputs_fingerprint(inputs, join=join, label=label, keys=keys,
                               index_unique=index_unique, merge=merge, shuffle=shuffle,
                               groupby=groupby)  # fmt: skip
    notes: list[str] = [repeated] if repeated else []
    with _scratch(location, resume, notes) as tmp:
        assembled = scratch.join(tmp, "assembled.zarr")
        done = scratch.join(tmp, ASSEMBLED_MARKER)
        if not (resume and _text(done) == fingerprint):
            scratch.remove(done)  # it described combined inputs that are being replaced
            started = Checkpoints(scratch.join(tmp, "assembling"), fingerprint, resume=resume)
            if not started.resumed:
                scratch.remove(assembled)
            rank = None if order is None else _inverse(order)
            _assemble(
                assembled, combined, matrices, maps, raw, budget, progress, rank, started, dask
            )  # fmt: skip
            scratch.write_bytes(done, fingerprint.encode())
            scratch.remove(started.directory)
        elif progress:
            progress("resuming from the combined inputs", 1, 1)
        del combined, raw, matrices  # written: the layout step's memory is its own
        check = _against_inputs(datasets, output, budget, join=join, label=label, keys=keys,
                                index_unique=index_unique, merge=merge)  # fmt: skip
        try:
            applied = apply(
                layout, assembled, output, overwrite=overwrite, check=check,
                options=replace(options, resume=resume and _resumable(layout, output)),
            )  # fmt: skip
        except IntegrityError:
            scratch.remove(done)  # the combined inputs are wrong: not kept for --resume
            raise
        except AnnlayoutError as err:
            raise ConcatError(
                f"{err} (the combined inputs are kept in {tmp}; rerun with --resume to "
                "start from them)"
            ) from None
    result = ConcatResult(**{f.name: getattr(applied, f.name) for f in fields(ApplyResult)})
    result.seconds = time.perf_counter() - start  # the assembly included
    result.notes = [*notes, *result.notes]
    result.inputs = [str(path) for path in inputs]
    if len(datasets) > 1:
        result.mixing = mixing(sources, MIXING_WINDOW)
    return result


def concat_plan(
    layout: Any,
    inputs: Sequence[str | Path],
    *,
    join: Join = "inner",
    label: str | None = None,
    keys: Sequence[str] | None = None,
    index_unique: str | None = None,
    merge: Merge = None,
    shuffle: int | None = None,
    groupby: str | None = None,
    options: RunOptions | None = None,
) -> tuple[Plan, MemoryPlan]:
    """The plan and memory model of the store :func:`concat` would write from ``inputs``
    (same keywords), from their metadata only: what concat itself checks before it reads any
    data, and refused (in the line concat gives) where it would be. Writes nothing."""
    options = RunOptions.merged(options)
    _check_arguments(inputs, keys, shuffle, groupby)
    with use_store_backend(options.store_backend):
        met = _combined_metadata(inputs, join=join, label=label, keys=keys,
                                 index_unique=index_unique, merge=merge, shuffle=shuffle,
                                 groupby=groupby)  # fmt: skip
        return _planned(load_layout(layout), met, options)


def _check_arguments(
    inputs: Sequence[str | Path], keys: Sequence[str] | None, shuffle: Any, groupby: Any
) -> None:
    if not inputs:
        raise ConcatError("concat: no inputs given")
    if keys is not None and len(keys) != len(inputs):
        raise ConcatError(f"--keys: {len(keys)} keys for {len(inputs)} inputs")
    if shuffle is not None and groupby is not None:
        raise ConcatError("concat: --shuffle and --groupby each set the order; give one")


@dataclass
class _Combined:
    """What concat knows of its result before reading any data: the inputs opened, their
    small elements combined (in memory) and their matrices described."""

    datasets: list[Dataset]
    combined: Any
    maps: list[np.ndarray]
    sources: np.ndarray
    order: np.ndarray | None
    matrices: dict[str, list[Any]]
    raw: Any
    repeated: str | None


def _combined_metadata(
    inputs: Sequence[str | Path],
    *,
    join: Join,
    label: str | None,
    keys: Sequence[str] | None,
    index_unique: str | None,
    merge: Merge,
    shuffle: int | None,
    groupby: str | None,
) -> _Combined:
    import anndata as ad

    datasets = [open_input(path) for path in inputs]
    check_unique_var(datasets)
    if join == "inner":
        check_common_genes(datasets)
    light = [small_elements_of(data) for data in datasets]
    check_obsm_widths(datasets, light)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # obs names repeat between inputs: index_unique says
        try:
            combined = ad.concat(
                light, join=join, label=label, keys=keys, index_unique=index_unique,
                merge=merge, uns_merge=merge,
            )  # fmt: skip
        except Exception as err:
            raise ConcatError(f"concat: anndata cannot combine the inputs: {err}") from None
    repeated = repeated_obs_names(combined.obs_names, index_unique)
    sizes = np.array([part.n_obs for part in light], dtype=np.int64)
    del light  # obsm can be hundreds of MB: one copy (the combined one) is enough
    maps = column_maps(combined.var_names, [d.var.index for d in datasets])
    sources = np.repeat(np.arange(len(datasets)), sizes)
    order = _order(combined, shuffle, groupby)
    if order is not None:
        combined = combined[order].copy()
        combined.uns[ORDER_KEY] = {
            "source_row": order,
            "method": "shuffle" if shuffle is not None else "groupby",
            **({"seed": shuffle} if shuffle is not None else {"column": groupby}),
            "inputs": np.array([str(path) for path in inputs], dtype=object),
            "input_n_obs": sizes,
        }
        sources = sources[order]
    matrices = {
        path: [d.matrix(path) for d in datasets] for path in ["X", *common_layers(datasets)]
    }
    raw = _raw(datasets, combined, join, label, keys, index_unique)
    return _Combined(datasets, combined, maps, sources, order, matrices, raw, repeated)


def _planned(layout: Any, met: _Combined, options: RunOptions) -> tuple[Plan, MemoryPlan]:
    """The layout step planned on the store the inputs will make, refused as apply refuses."""
    small = parse_size(WHOLE_BELOW, "--whole-below")
    expected = _combined_survey(met.combined, met.matrices, met.raw)
    return plan_within_budget(layout, expected, options.budget, options.workers, small)


def _combined_survey(
    combined: Any, matrices: dict[str, list[Any]], raw: tuple[Any, list[Any], Any] | None
) -> Survey:
    """The store the inputs will make, as apply will survey it, known before any input is
    read: the small elements from memory; each matrix from its inputs' shapes, dtypes and
    nonzeros (their sum: an upper bound where an inner join drops genes), stored as
    :func:`_write_matrix` stores it."""
    survey = survey_adata(combined)
    whole = [(path, present, combined.n_vars) for path, present in matrices.items()
             if all(m is not None for m in present)]  # fmt: skip
    if raw is not None:
        whole.append(("raw/X", raw[1], raw[0].n_vars))
    for path, present, n_vars in whole:
        n_obs = sum(m.shape[0] for m in present)
        dtype = np.result_type(*(m.dtype for m in present))
        nnz = sum(m.nnz for m in present)
        if all(not m.sparse for m in present):
            encoding, arrays = "array", [array_info("", (n_obs, n_vars), dtype)]
        else:
            index = np.int32 if n_vars < 2**31 else np.int64
            encoding = "csr_matrix"
            arrays = [array_info("data", (nnz,), dtype), array_info("indices", (nnz,), index),
                      array_info("indptr", (n_obs + 1,), np.int64)]  # fmt: skip
        element = ElementInfo(path=path, encoding=encoding, shape=(n_obs, n_vars), nnz=nnz)
        element.dtype, element.arrays = arrays[0].dtype, arrays
        survey.elements.append(element)
    return survey


def _against_inputs(
    datasets: list[Dataset], output: Path | str, budget: int, **options: Any
) -> Callable[[Path | str], None]:
    """The written store checked against the inputs themselves (not the combined inputs in
    the scratch, which the layout step copied): X, each layer every input has and raw's X
    hold each input's rows, in the order recorded in ``uns["annlayout_order"]``, on the
    columns their genes have in the store (found here by name); obs and var equal what
    ``anndata.concat`` makes of the inputs' (``options``: its join, label, keys,
    index_unique and merge), in that order. Streamed: :func:`~annlayout.verify.compare.
    rows_difference`. A difference is an :class:`IntegrityError` naming the element."""

    def check(location: Path | str) -> None:
        from anndata.io import read_elem

        from annlayout.storage.stores import open_anndata

        with open_anndata(location) as store, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = store.root
            n_obs = sum(len(d.obs.index) for d in datasets)
            order = None
            if "uns" in root and ORDER_KEY in root["uns"]:
                order = np.asarray(read_elem(root["uns"][ORDER_KEY]["source_row"]), np.int64)
                if not np.array_equal(np.sort(order), np.arange(n_obs)):
                    _failed(output, f"uns/{ORDER_KEY}: not an order of the {n_obs:,} rows")
            light = [small_elements_of(data) for data in datasets]
            frames = [ad_frames(part) for part in light]
            del light
            expected = _concat_frames(frames, **options)
            if order is not None:
                expected = expected[order]
            for key in ("obs", "var"):
                problem = frame_values_difference(getattr(expected, key), read_elem(root[key]))
                if problem:
                    _failed(output, f"{key}: {problem}")
            var_names = expected.var_names
            del expected, frames
            for path in ["X", *common_layers(datasets)]:
                present = [d.matrix(path) for d in datasets]
                if any(m is None for m in present):
                    continue
                parts = [RowsOf(d.source, m, var_names.get_indexer(d.var.index))
                         for d, m in zip(datasets, present, strict=True)]  # fmt: skip
                _rows_checked(output, path, root, parts, budget, order)
            raws = [d.raw for d in datasets if d.raw is not None]
            if len(raws) == len(datasets):  # anndata.concat keeps raw only then
                raw_var: Any = read_elem(root["raw"]["var"])
                parts = [RowsOf(d.source, r.X, raw_var.index.get_indexer(r.var.index))
                         for d, r in zip(datasets, raws, strict=True)]  # fmt: skip
                _rows_checked(output, "raw/X", root, parts, budget, order)

    return check


def _rows_checked(
    output: Path | str, path: str, root: Any, parts: list[RowsOf], budget: int,
    order: np.ndarray | None,
) -> None:  # fmt: skip
    if path not in root:
        _failed(output, f"{path}: missing, where every input has one")
    problem = rows_difference(path, root[path], parts, budget, order=order)
    if problem:
        _failed(output, problem)


def _failed(output: Path | str, problem: str) -> None:
    raise IntegrityError(
        f"{output}: verification against the inputs failed, output discarded: {problem}"
    )


def ad_frames(part: Any) -> Any:
    """An input's obs and var alone: all ``anndata.concat`` needs to make the result's."""
    import anndata as ad

    return ad.AnnData(obs=part.obs, var=part.var)


def _concat_frames(frames: list[Any], **options: Any) -> Any:
    import anndata as ad

    merge = options.pop("merge", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ad.concat(frames, merge=merge, uns_merge=merge, **options)


@dataclass(frozen=True)
class OnDask:
    """Sparse matrices are combined by dask tasks (:mod:`annlayout.combine.assembly`) on
    ``executor``, which open the inputs at ``locations`` themselves."""

    executor: Executor
    locations: list[str]


def _on_dask(workers: int, scheduler: str | None, inputs: Sequence[str | Path]) -> OnDask | None:
    if workers <= 1 and not scheduler:
        return None
    from annlayout.base.optional import dask_requirement

    needed = dask_requirement(workers, scheduler)
    if needed:
        raise ConcatError(needed)
    return OnDask(executor_for(workers, scheduler), [task_location(p) for p in inputs])


def _resumable(layout: Any, output: str | Path) -> bool:
    """apply resumes local zarr outputs; others redo the layout step whole."""
    from annlayout.layout.spec import load_layout

    return not is_url(output) and load_layout(layout).target.format == "zarr"


def scratch_location(output: str | Path, chosen: str | Path | None, on_cluster: bool) -> str:
    """Where a run's scratch goes, under one name for an output (so ``--resume`` finds it):
    in ``chosen`` (a directory or URL prefix, ``--scratch``) if given; else beside the output,
    except that an output on object storage written by this machine's threads (no
    ``--scheduler``) has it in the local temporary directory, where it is faster; a
    cluster's workers share no disk with the driver, only object storage."""
    if chosen is not None:
        name = hashlib.sha256(str(output).encode()).hexdigest()[:16]
        base = str(chosen) if is_url(chosen) else str(Path(chosen).resolve())
        return scratch.join(base, f".{Path(str(output).rstrip('/')).name}-{name}{SCRATCH_SUFFIX}")
    if is_url(output):
        url = str(output).rstrip("/")
        if on_cluster:
            parent, _, leaf = url.rpartition("/")
            return f"{parent}/.{leaf}{SCRATCH_SUFFIX}"
        name = hashlib.sha256(url.encode()).hexdigest()[:16]
        return str(Path(tempfile.gettempdir()) / f".annlayout-concat-{name}")
    path = Path(output).resolve()
    return str(path.with_name(f".{path.name}{SCRATCH_SUFFIX}"))


@contextmanager
def _scratch(location: str, resume: bool, notes: list[str]) -> Iterator[str]:
    """The intermediate store's directory or URL prefix (:func:`scratch_location`). A run
    that was killed leaves it, and the next run removes it first, or with ``resume`` takes
    the combined inputs from it when they are complete and were made from the same inputs
    and options. A run that fails after combining the inputs, or is interrupted at any point,
    keeps them for ``resume``; otherwise it is removed, on success as on failure."""
    held = scratch.names(location) if is_url(location) or Path(location).exists() else []
    if not resume and held:
        size, _ = footprint(location)
        scratch.remove(location)
        notes.append(
            f"removed {location} ({human_size(size)}), kept by an earlier run that was "
            "stopped: without --resume a run starts clean"
        )
    if not is_url(location):
        Path(location).mkdir(parents=True, exist_ok=True)
    try:  # a signal is raised between blocks and tasks: inside a library it may become
        with deferred_interrupts():  # another error, and the checkpoint go unnamed
            yield location
    except (Interrupted, KeyboardInterrupt) as stop:
        signum = stop.signum if isinstance(stop, Interrupted) else signal.SIGINT
        if _holds_progress(location):  # --resume continues from what was combined
            # with what the layout step kept, if it was interrupted: both resume
            inner = stop.kept if isinstance(stop, Interrupted) else ()
            raise Interrupted(signum, location, *inner) from None
        scratch.remove(location)  # nothing recorded yet: nothing to resume from
        raise Interrupted(signum) from None
    except BaseException:
        if not scratch.exists(scratch.join(location, ASSEMBLED_MARKER)):
            scratch.remove(location)
        raise
    scratch.remove(location)


def _holds_progress(location: str) -> bool:
    """The scratch holds what --resume continues from: the combined inputs, or a record of
    how far combining them got."""
    return scratch.exists(scratch.join(location, ASSEMBLED_MARKER)) or any(
        "/" not in name and name.endswith(".json")
        for name in scratch.names(scratch.join(location, "assembling"))
    )


def _order(combined: Any, shuffle: int | None, groupby: str | None) -> np.ndarray | None:
    if shuffle is not None:
        return shuffled(combined.n_obs, shuffle)
    if groupby is None:
        return None
    if groupby not in combined.obs.columns:
        known = ", ".join(map(str, combined.obs.columns)) or "none"
        raise ConcatError(f"--groupby: no obs column {groupby!r} in the result (columns: {known})")
    return grouped(combined.obs[groupby])


def _inverse(order: np.ndarray) -> np.ndarray:
    """The new position of each row of the concatenation."""
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size, dtype=order.dtype)
    return rank


def open_input(path: str | Path) -> Dataset:
    try:
        return open_dataset(path)
    except NotAnnDataError:
        raise
    except Exception as err:
        raise NotAnnDataError(f"{path}: cannot open: {str(err).splitlines()[0]}") from None


def check_unique_var(datasets: list[Dataset]) -> None:
    """Genes are aligned by name: a name twice has no one place."""
    for data in datasets:
        if not data.var.index.is_unique:
            twice = data.var.index[data.var.index.duplicated()][0]
            raise ConcatError(f"{data.source}: var name {twice!r} appears twice; nothing written")


def check_common_genes(datasets: list[Dataset]) -> None:
    """An inner join keeps the genes every input has. Inputs with none in common would make a
    store of cells without genes, which nobody asks for: refused before their data is read,
    naming the inputs up to the one that left no gene."""
    common = datasets[0].var.index
    for i, data in enumerate(datasets[1:], start=1):
        common = common.intersection(data.var.index)
        if common.empty and any(len(d.var.index) for d in datasets[: i + 1]):
            named = _listed([d.source for d in datasets[: i + 1]])
            raise ConcatError(
                f"concat: no gene is in every one of {named}: an inner join would leave 0 "
                "genes; nothing written (--join outer keeps the genes any input has)"
            )


def _listed(names: Sequence[str]) -> str:
    if len(names) > 4:
        return f"{names[0]}, {names[1]}, ... and {names[-1]} ({len(names)} inputs)"
    return ", ".join(names[:-1]) + f" and {names[-1]}"


def repeated_obs_names(names: Any, index_unique: str | None) -> str | None:
    """A warning if cells share obs names (barcodes repeat between runs), as anndata.concat
    warns: selecting cells by name then finds several."""
    repeated = names.duplicated()
    count = int(repeated.sum())
    if not count:
        return None
    fix = (
        "--index-unique - appends each input's key to make them unique"
        if index_unique is None
        else "the inputs' own obs names repeat, or --keys do"
    )
    return (
        f"{count:,} cells have an obs name an earlier cell has (e.g. {names[repeated][0]!r}): "
        f"the result's obs names are not unique; {fix}"
    )


def small_elements_of(data: Dataset) -> Any:
    """The input without its matrices: obs, var, obsm, varm, uns, as anndata.concat takes
    them."""
    try:
        return data.small_elements()
    except Exception as err:
        raise ConcatError(f"{data.source}: cannot read obs/var/obsm/uns: {err}") from None


def check_obsm_widths(datasets: list[Dataset], light: list[Any]) -> None:
    """An embedding's columns are its coordinates: two inputs whose ``obsm[key]`` differ in
    width hold different bases, which anndata.concat would silently cut to the narrower (or
    pad) and so mix; refused instead."""
    widths: dict[str, tuple[tuple[int, ...], str]] = {}
    for data, part in zip(datasets, light, strict=True):
        for key, value in part.obsm.items():
            if not (isinstance(value, np.ndarray) or sp.issparse(value)):
                continue  # data frames are joined by column name, awkward arrays by field
            shape = tuple(value.shape[1:])
            first = widths.setdefault(key, (shape, data.source))
            if first[0] != shape:
                raise ConcatError(
                    f"obsm[{key!r}] is {_shape(first[0])} in {first[1]} but {_shape(shape)} "
                    f"in {data.source}: the columns do not line up; drop or recompute it"
                )


def _shape(trailing: tuple[int, ...]) -> str:
    return "x".join(map(str, trailing)) + " wide" if trailing else "1-D"


def common_layers(datasets: list[Dataset]) -> list[str]:
    names = [set(d.layers) for d in datasets]
    return [f"layers/{key}" for key in sorted(set.intersection(*names))] if names else []


def _raw(
    datasets: list[Dataset], combined: Any, join: Join, label: Any, keys: Any, index_unique: Any
) -> tuple[Any, list[Any], list[np.ndarray]] | None:
    """raw as ``anndata.concat`` combines it: only where every input has one, its var
    joined on its own, without merging columns. (combined raw without X, raw X per input,
    column maps)."""
    import anndata as ad
    import pandas as pd

    found = [d.raw for d in datasets]
    raws = [r for r in found if r is not None]
    if len(raws) < len(found):
        return None
    light = [
        ad.AnnData(obs=pd.DataFrame(index=d.obs.index), var=r.var, varm=r.varm or None)
        for d, r in zip(datasets, raws, strict=True)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = ad.concat(light, join=join, label=label, keys=keys, index_unique=index_unique)
    matrices = [r.X for r in raws]
    return raw, matrices, column_maps(raw.var_names, [r.var.index for r in raws])


class Checkpoints:
    """How far the assembly got, recorded as it goes (a small JSON file per matrix in
    ``directory``), so that ``--resume`` continues a run killed while it combined the inputs.
    A matrix's record says how many rows and nonzeros its arrays hold whole (written after
    them: zarr grows an array's shape before it writes the values, so the shape alone does
    not say), and where a shuffle's first pass got to; or, for a matrix combined by dask
    tasks, ``combined_by: tasks`` (the tasks' own files say how far they got)."""

    def __init__(self, directory: str, fingerprint: str, *, resume: bool):
        self.directory = directory
        self.resumed = resume and _text(scratch.join(directory, "fingerprint")) == fingerprint
        self._records: dict[str, dict[str, Any]] = {}  # this run's: read back without a GET
        if not self.resumed:
            scratch.remove(directory)
            scratch.write_bytes(scratch.join(directory, "fingerprint"), fingerprint.encode())

    def _file(self, name: str) -> str:
        return scratch.join(self.directory, name.replace("/", "__") + ".json")

    def _read(self, name: str) -> dict[str, Any] | None:
        if name in self._records:
            return self._records[name]
        text = _text(self._file(name))
        return None if text is None else json.loads(text)

    def get(self, name: str) -> dict[str, Any] | None:
        """The last record of ``name`` (a matrix, or ``small`` for the small elements), if
        this run resumes an earlier one that made it."""
        return self._read(name) if self.resumed else None

    def put(self, name: str, saved: dict[str, np.ndarray] | None = None, **record: Any) -> None:
        """Record ``name``'s progress, and the arrays ``saved`` with it (in a file of their
        own that the record names: written first, and the one it replaces removed after)."""
        path = self._file(name)
        before = (self._read(name) or {}).get("arrays")
        record.pop("arrays", None)
        stem = name.replace("/", "__")
        if saved is not None:  # a new name each time: the recorded file is never touched
            record["arrays"] = f"{stem}.{uuid.uuid4().hex[:12]}.npz"
            buffer = io.BytesIO()
            np.savez(buffer, **saved)  # type: ignore[arg-type]
            scratch.write_bytes(scratch.join(self.directory, record["arrays"]), buffer.getbuffer())
        scratch.write_bytes(path, json.dumps(record).encode())  # whole or not at all
        self._records[name] = record
        if before and before != record.get("arrays"):
            scratch.remove(scratch.join(self.directory, before))

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        """The arrays recorded with ``name``'s last record."""
        record = self.get(name) or {}
        if "arrays" not in record:
            return {}
        saved_bytes = scratch.read_bytes(scratch.join(self.directory, record["arrays"]))
        with np.load(io.BytesIO(saved_bytes)) as saved:
            return {key: saved[key] for key in saved.files}


def _text(location: str) -> str | None:
    """A small file's text; None where there is none."""
    try:
        return scratch.read_bytes(location).decode()
    except FileNotFoundError:
        return None


def _assemble(
    target: str,
    combined: Any,
    matrices: dict[str, list[Any]],
    maps: list[np.ndarray],
    raw: tuple[Any, list[Any], list[np.ndarray]] | None,
    budget: int,
    progress: Progress | None,
    rank: np.ndarray | None,
    log: Checkpoints,
    dask: OnDask | None = None,
) -> None:
    """The combined AnnData as a zarr store: small elements through anndata, each matrix
    appended in row blocks of about a quarter of ``budget`` (through buckets beside
    ``target`` when ``rank`` moves rows), or, on ``dask``, sparse matrices by the tasks of
    :func:`annlayout.combine.assembly.assemble_sparse`. Resumes where ``log`` says an
    earlier run got."""
    import zarr

    from annlayout.storage.stores import zarr_store

    if log.get("small") is None:
        root = zarr.open_group(zarr_store(target, read_only=False), mode="w", zarr_format=3)
        _write_small(root, combined, raw)
        log.put("small", done=True)
    root = zarr.open_group(zarr_store(target, read_only=False), mode="r+")
    # the shuffle's buckets of the matrices this process combines: on its own disk (a
    # scratch on object storage holds the tasks' files; these are not resumed from there)
    on_disk = scratch.local(target)
    spool = ExitStack()
    if on_disk is None:
        buckets = Path(spool.enter_context(tempfile.TemporaryDirectory(prefix="annlayout-")))
    else:
        buckets = on_disk.parent / "buckets"

    def write(path: str, present: list[Any], maps: list[np.ndarray], n_vars: int) -> None:
        check_interrupted()
        record = log.get(path) or {}
        if record.get("done"):
            return
        if dask is not None and _on_tasks(present):
            tasks = scratch.join(log.directory, "tasks", path.replace("/", "__"))
            if record.get("combined_by") != "tasks":  # none, or the serial path's: start clean
                scratch.remove(tasks)
                log.put(path, combined_by="tasks")
            sources = [Source(location, path, chosen_backend()) for location in dask.locations]
            dtype = np.result_type(*(m.dtype for m in present))
            assemble_sparse(
                target, path, sources, present, maps, n_vars, dtype, rank, budget,
                dask.executor, tasks, progress,
            )  # fmt: skip
            log.put(path, done=True)
            scratch.remove(tasks)  # after the record: the tasks' files are no longer needed
            return
        if on_disk is None and record:
            log.put(path)  # its buckets were on a disk of the run that was killed: anew
        # uncompressed: zarrs appends 2x as fast (where it can reach the store)
        with codec_pipeline(codec_pipeline_for("zarrs", target)):
            _write_matrix(root, path, present, maps, n_vars, budget, progress, rank, buckets, log)

    with spool:
        for path, present in matrices.items():
            if all(m is not None for m in present):
                write(path, present, maps, combined.n_vars)
        if raw is not None:
            write("raw/X", raw[1], raw[2], raw[0].n_vars)


def _on_tasks(present: list[Any]) -> bool:
    """Sparse matrices that tasks can read again by location (a legacy raw is read whole
    into memory): combined by tasks; the rest (dense, rare) in this process."""
    return all(isinstance(m, Matrix) for m in present) and any(m.sparse for m in present)


def _write_small(root: Any, combined: Any, raw: Any) -> None:
    import anndata as ad

    with warnings.catch_warnings(), writing():
        warnings.simplefilter("ignore")
        for key in ("obs", "var", "obsm", "varm", "varp", "uns"):
            value = getattr(combined, key)
            ad.experimental.write_elem(root, key, value if key in ("obs", "var") else dict(value))
        if raw is not None:
            raw_group = root.create_group("raw")
            raw_group.attrs.update(encoding_attrs("raw"))
            ad.experimental.write_elem(raw_group, "var", raw[0].var)
            ad.experimental.write_elem(raw_group, "varm", dict(raw[0].varm))
    root.attrs.update(encoding_attrs("anndata"))


def _write_matrix(
    root: Any,
    path: str,
    present: list[Any],
    maps: list[np.ndarray],
    n_vars: int,
    budget: int,
    progress: Progress | None,
    rank: np.ndarray | None,
    scratch: Path,
    log: Checkpoints,
) -> None:
    """One matrix of the inputs, stacked: CSR where any input is sparse (as anndata.concat
    makes it), dense where all are (absent columns NaN, its fill for dense arrays)."""
    dtype = np.result_type(*(m.dtype for m in present))
    n_obs = sum(m.shape[0] for m in present)
    if (log.get(path) or {}).get("done"):
        return
    if all(not m.sparse for m in present):  # rare: redone whole
        if any((m < 0).any() for m in maps):  # outer join: anndata fills NaN
            dtype = np.result_type(dtype, np.float32)
        rows = min(max(1, n_obs), dense_rows(n_vars, dtype.itemsize, budget))
        array = root.create_array(
            path, shape=(n_obs, n_vars), dtype=dtype, chunks=(rows, max(1, n_vars)),
            compressors=None, overwrite=True,
        )  # fmt: skip
        array.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        blocks = dense_blocks(present, maps, n_vars, dtype, rows)
        if rank is not None:
            dense = RowBuckets(scratch / path, equal_edges(rank.size, rows))
            for first, block in blocks:
                check_interrupted()
                dense.add_dense(rank[first : first + block.shape[0]], block)
            blocks = _numbered(dense.drain_dense())
        writer = WholeChunkWriter(array, rows, dtype)  # an input's last block is short
        for _, block in blocks:
            check_interrupted()
            writer.write(block)
        writer.close()
        log.put(path, done=True)
        return
    record = log.get(path)
    if record is None or "rows" not in record or path not in root:  # tasks' record: anew
        record = {"rows": 0, "nnz": 0}
        group = root.create_group(path, overwrite=True)
        group.attrs.update(
            {"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [n_obs, n_vars]}
        )  # fmt: skip
        _growing(group, "data", dtype)
        _growing(group, "indices", np.int32 if n_vars < 2**31 else np.int64)
        _growing(group, "indptr", np.int64, INDPTR_CHUNK)
        tails = {"indptr": np.zeros(1, dtype=np.int64)}
    else:  # resumed: the whole chunks recorded are kept, the rest cut off; the tails read
        group = root[path]
        tails = log.arrays(path)
    lengths = record.get("lengths", {})
    parts = {
        name: _appender(group[name], lengths.get(name, 0), tails.get(name), budget)
        for name in ("data", "indices", "indptr")
    }
    data, indices, indptr = parts["data"], parts["indices"], parts["indptr"]
    rows_written, offset = record["rows"], record["nnz"]
    if progress and rows_written:
        progress(f"resuming {path} at row {rows_written:,}", rows_written, n_obs)

    def checkpoint() -> None:
        record.update(rows=rows_written, nnz=offset,
                      lengths={name: part.position for name, part in parts.items()})  # fmt: skip
        log.put(path, {name: part.tail for name, part in parts.items()}, **record)

    buckets: RowBuckets | None = None
    if rank is None:
        sparse = csr_blocks(present, maps, budget, path, progress, start=rows_written)
    else:
        nnz = sum(m.nnz for m in present)
        per_bucket = record.get("rows_per_bucket") or rows_per_block(nnz, n_obs, budget)
        scattered = record.get("scattered", 0)
        if progress and 0 < scattered < n_obs:
            progress(f"resuming the shuffle of {path} at row {scattered:,}", scattered, n_obs)
        buckets = RowBuckets(
            scratch / path, equal_edges(rank.size, per_bucket), restore=record.get("files"),
            dtypes=record.get("dtypes"),
        )  # fmt: skip
        for first, ptr, idx, val in csr_blocks(present, maps, budget, path, progress, scattered):
            check_interrupted()
            # the inputs' dtypes may differ: the bucket files hold the result's
            val = val.astype(data.dtype, copy=False)
            ranks = rank[first : first + ptr.size - 1]
            buckets.add_csr(ranks, ptr, idx.astype(indices.dtype, copy=False), val)
            record.update(rows_per_bucket=per_bucket, scattered=first + ptr.size - 1,
                          files=buckets.files(), dtypes=buckets.dtypes)  # fmt: skip
            checkpoint()
        # the next bucket read back and put in order on a thread while this one is written
        # checkpoints fall after whole buckets, the last bucket perhaps partial: round up
        first_bucket = -(-rows_written // per_bucket)
        drained = buckets.drain_csr(first_bucket)
        sparse = prefetched((first_bucket + i, *b) for i, b in enumerate(drained))
    since, drained_buckets = 0, []  # bytes written since the last checkpoint; buckets in them
    for number, ptr, idx, val in sparse:
        check_interrupted()
        data.write(val.astype(data.dtype, copy=False))
        indices.write(idx.astype(indices.dtype, copy=False))
        indptr.write(ptr[1:] + offset)
        offset += int(ptr[-1])
        rows_written += ptr.size - 1
        since += val.nbytes + idx.nbytes
        drained_buckets.append(number)
        if since >= checkpoint_bytes(budget):
            checkpoint()
            since = 0
            if buckets is not None:  # a bucket's files go once a checkpoint is past it
                for bucket in drained_buckets:
                    buckets.discard(bucket)
            drained_buckets.clear()
    for part in parts.values():
        part.close()
    log.put(path, done=True)


def _appender(array: Any, stored: int, tail: np.ndarray | None, budget: int) -> WholeChunkWriter:
    """A combined array appended to in whole chunks only, the rest (the tail) kept until
    more come, so no chunk is ever written twice: a run killed while it writes can spoil
    only chunks written after its last checkpoint (the array's whole chunks and the tail,
    :meth:`Checkpoints.put`), never one the checkpoint counts. ``stored``: the whole chunks
    a resumed run keeps (the rest is cut off)."""
    chunk = int(array.chunks[0])
    span = span_of(chunk, chunk * np.dtype(array.dtype).itemsize, False, budget)
    return WholeChunkWriter(array, chunk, array.dtype, position=stored, grow=True, span=span,
                            tail=tail)  # fmt: skip


def prefetched(blocks: Iterator[Any]) -> Iterator[Any]:
    """``blocks``, each produced on a thread while the caller works on the one before."""
    import queue
    import threading

    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for block in blocks:
                while not stop.is_set():
                    try:
                        handoff.put(("block", block), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put(("end", None))
        except BaseException as err:  # handed to the caller, raised there
            handoff.put(("error", err))

    producer = threading.Thread(  # in the caller's context: its object-store client
        target=contextvars.copy_context().run, args=(produce,), daemon=True,
        name="annlayout-prefetch",
    )  # fmt: skip
    producer.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting to hand over
            try:
                handoff.get_nowait()
            except queue.Empty:
                producer.join(timeout=0.1)


def dense_blocks(
    present: list[Any], maps: list[np.ndarray], n_vars: int, dtype: Any, rows: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, block) of the inputs one after another, on the result's columns."""
    at = 0
    for matrix, column_map in zip(present, maps, strict=True):
        kept = column_map >= 0
        for start in range(0, matrix.shape[0], rows):
            stop = min(matrix.shape[0], start + rows)
            block = matrix.rows(start, stop)
            if sp.issparse(block):
                block = block.toarray()
            out = np.full((stop - start, n_vars), np.nan if dtype.kind == "f" else 0, dtype)
            out[:, column_map[kept]] = block[:, kept]
            yield at, out
            at += stop - start


def csr_blocks(
    present: list[Any],
    maps: list[np.ndarray],
    budget: int,
    path: str,
    progress: Any,
    start: int = 0,
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(first row, indptr, indices, data) of the inputs' row blocks, on the result's
    columns, in order. :data:`~annlayout.planning.memory.READ_AHEAD` threads read and remap
    the next blocks while the caller works on this one (h5py and pread reads, scipy's row
    sort and numpy's gathers release the GIL): the caller's block and ``READ_AHEAD`` more are
    in memory, each within :func:`~annlayout.planning.memory.input_block_budget`. ``start``: the first row of the stacked inputs to yield
    (a resumed run's)."""
    sizes = [(int(m.shape[0]), int(m.nnz)) for m in present]
    blocks = input_blocks(sizes, input_block_budget(budget), start)
    for number in sorted({block[0] for block in blocks}):
        if present[number].sparse:  # its indptr and shard indexes
            present[number].warm()  # read here, not by two threads at once
    monotonic = [is_monotonic(column_map) for column_map in maps]
    jobs = [(number, present[number], maps[number], monotonic[number], lo, hi, at)
            for number, lo, hi, at in blocks]  # fmt: skip

    def remapped(job: tuple[Any, ...]) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        _, matrix, column_map, monotonic, start, stop, at = job
        block = sp.csr_matrix(matrix.rows(start, stop))
        ptr, idx, val = remap_rows(
            block.indptr, block.indices, block.data, column_map, monotonic=monotonic
        )
        return at, ptr, idx, val

    last_of_input = {job[0]: i for i, job in enumerate(jobs)}
    for i, block in enumerate(ordered_map(remapped, jobs, READ_AHEAD)):
        yield block
        number = jobs[i][0]
        if progress and last_of_input[number] == i:
            progress(f"assembling {path}", number + 1, len(present))


def ordered_map(function: Any, items: Sequence[Any], workers: int) -> Iterator[Any]:
    """``function`` of each item, in order, computed on ``workers`` threads that run at most
    ``workers`` items ahead of the caller. An error is raised in the caller; a caller that
    stops early cancels what has not started and waits for what has."""
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    pool = ThreadPoolExecutor(workers, thread_name_prefix="annlayout-prefetch")
    pending: deque[Future[Any]] = deque()
    try:
        for item in items:
            # in the caller's context (its object-store client): a copy each, as a context
            # is entered by one thread at a time
            pending.append(pool.submit(contextvars.copy_context().run, function, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def _numbered(blocks: Iterator[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
    at = 0
    for block in blocks:
        yield at, block
        at += block.shape[0]


def _growing(group: Any, name: str, dtype: Any, chunk: int = SCRATCH_CHUNK) -> Any:
    return group.create_array(name, shape=(0,), dtype=dtype, chunks=(chunk,), compressors=None)
