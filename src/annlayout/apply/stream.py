"""Streaming apply: rewrite a store into a layout without holding any large element whole.

The rewrite has three phases:

1. *prepare* (main process): walk the input, create every group and array of the output with
   its planned chunks, shards, codecs and attributes; write small elements (uns, strings,
   categoricals, small columns) through anndata and the layout's callback; collect one
   :class:`Block` per output shard (or per run of chunks where unsharded) of every large array;
2. *copy* the blocks and build the other orientations: independent tasks
   (:mod:`annlayout.execute.tasks`), run in order, on dask's threads (``workers``), or on a
   dask.distributed cluster (``scheduler``). Each block reads one slice of the input and
   writes whole shards of the output, so no shard is written twice and memory stays bounded;
3. *finish*: provenance, consolidated metadata, verification, and the atomic rename.

Blocks, transposes and what each holds at once come from the memory model
(:mod:`annlayout.planning.memory`), computed and checked against the budget right after
planning, before anything is written.
"""

from __future__ import annotations

import math
import resource
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from annlayout.apply.verbatim import AsStoredPlan, copy_as_stored, plan_as_stored
from annlayout.base.defaults import WHOLE_BELOW
from annlayout.base.errors import ElementReadError
from annlayout.base.malloc import bound_malloc_arenas, release_memory
from annlayout.base.optional import dask_requirement
from annlayout.base.options import Backend, CodecPipeline, Progress, RunOptions
from annlayout.base.version import package_version
from annlayout.execute.resume import (
    JOURNAL,
    Prepared,
    completed,
    fingerprint,
    load,
    resume_dir,
    save,
)
from annlayout.execute.tasks import (
    CopyTask,
    Journaled,
    Stores,
    Task,
    TransposeTask,
    check_reachable,
    execute,
    executor_for,
    opened,
    task_key,
)
from annlayout.format.encodings import (
    PROVENANCE_KEY,
    StandIn,
    Upgraded,
    element_path,
    encoding_attrs,
    encoding_of,
    is_numeric_array,
    read_upgraded,
    set_json_attr,
    sparse_nbytes,
    sparse_shape,
    write_sparse_attrs,
    writing,
)
from annlayout.format.registry import get, lookup
from annlayout.layout.spec import Layout, load_layout
from annlayout.planning.memory import (
    DEFAULT_MEMORY,
    Block,
    MemoryPlan,
    array_blocks,
    check_disjoint_units,
    memory_plan,
    parse_size,
    plan_transpose,
    plan_within_budget,
    source_dtypes,
    streamable,
)
from annlayout.planning.plan import ArrayPlan, ElementPlan, Plan, PlanError, human_size
from annlayout.planning.survey import Survey, survey_opened
from annlayout.storage.commit import (
    ApplyError,
    Interrupted,
    StagedRemoteOutput,
    atomic_output,
    check_free_space,
    check_interrupted,
    check_paths,
    check_remote_paths,
    remote_output,
    remove,
    staging_dir,
    temporary_sibling,
)
from annlayout.storage.pipeline import codec_pipeline
from annlayout.storage.remote import chosen_backend, codec_pipeline_for
from annlayout.storage.remote import store_backend as use_store_backend
from annlayout.storage.stores import (
    AnnDataStore,
    check_output_name,
    consolidate_metadata,
    detect_format,
    footprint,
    is_url,
    open_anndata,
    provenance,
    zarr_store,
)
from annlayout.write.arrays import backend_of, create_array
from annlayout.write.callback import LayoutCallback
from annlayout.write.copies import mirror_record, write_record


@dataclass
class ApplyResult:
    path: Path | str  # a URL for an output on object storage
    layout: str
    seconds: float = 0.0
    plan: Plan | None = None
    notes: list[str] = field(default_factory=list)
    n_blocks: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    peak_rss: int = 0
    verified: bool = False
    verify_seconds: float = 0.0
    streamed: list[str] = field(default_factory=list)
    upgrades: list[str] = field(default_factory=list)
    resumed_tasks: int = 0  # tasks a killed run had completed, skipped by --resume

    @property
    def n_objects(self) -> int:
        return self.plan.n_objects if self.plan else 0

    @property
    def plans(self) -> dict[str, ElementPlan]:
        return {e.path: e for e in self.plan.elements} if self.plan else {}

    def summary(self) -> dict[str, Any]:
        return {
            "output": str(self.path),
            "layout": self.layout,
            "seconds": round(self.seconds, 3),
            "elements": len(self.plans),
            "streamed_elements": self.streamed,
            "blocks": self.n_blocks,
            "objects": self.n_objects,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "peak_rss": self.peak_rss,
            "verified": self.verified,
            "verify_seconds": round(self.verify_seconds, 3),
            "notes": self.notes,
            "upgrades": self.upgrades,
        }


def apply(
    layout: str | Path | Layout,
    source: str | Path,
    output: str | Path,
    *,
    overwrite: bool = False,
    options: RunOptions | None = None,
    small_element: str | int = WHOLE_BELOW,
    check: Callable[[Path | str], None] | None = None,
    memory: str | int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    verify: bool | None = None,
    resume: bool | None = None,
    codec_pipeline_name: CodecPipeline | None = None,
    store_backend: Backend | None = None,
    progress: Progress | None = None,
) -> ApplyResult:
    """Rewrite the AnnData store ``source`` into ``output`` with ``layout``, out of core.

    ``options`` (:class:`~annlayout.RunOptions`) says how the run goes; ``memory=``,
    ``workers=``, ``scheduler=``, ``verify=``, ``resume=``, ``codec_pipeline_name=``,
    ``store_backend=`` and ``progress=`` may be given instead, or over its settings (the
    defaults: 2GiB, 1 worker, verified, not resumed, zarrs, obstore where installed).
    Large elements are copied block by block within ``memory`` (a byte size, shared by
    ``workers``); what does not fit is refused before anything is written. The input is only
    read; ``output`` appears only when complete and (unless ``verify=False``) verified.
    ``resume``: a local zarr output whose run was killed continues from the tasks that run
    completed, when the input, layout, memory and workers are the same (otherwise it starts
    clean); a resumed run that fails keeps its partial output for the next ``resume``.
    ``small_element``: elements smaller than this are copied whole (``--whole-below``).
    ``check``: called with the finished output before it replaces ``output`` (with
    ``verify``): concat's verification against its inputs raises there.
    """
    options = RunOptions.merged(
        options, memory=memory, workers=workers, scheduler=scheduler, verify=verify,
        resume=resume, codec_pipeline=codec_pipeline_name, store_backend=store_backend,
        progress=progress,
    )  # fmt: skip
    with use_store_backend(options.store_backend):
        return _apply_run(layout, source, output, overwrite, options, small_element, check)


def _apply_run(
    layout: str | Path | Layout,
    source: str | Path,
    output: str | Path,
    overwrite: bool,
    options: RunOptions,
    small_element: str | int,
    check: Callable[[Path | str], None] | None,
) -> ApplyResult:
    start = time.perf_counter()
    bound_malloc_arenas()  # best before codec threads start: the CLI calls it first
    layout = load_layout(layout)
    check_output_name(output, layout.target.format, layout.name)
    detect_format(source)  # a missing input is named before the output is looked at
    remote = is_url(output)
    if remote:
        output = str(output).rstrip("/")
        if layout.target.format == "h5ad":
            raise ApplyError(f"{output}: h5ad output must be a local path")
        check_remote_paths(str(source), output, overwrite=overwrite)
    else:
        output = Path(output)
        check_paths(Path(source), output, overwrite=overwrite)
    source = source if is_url(source) else Path(source)
    if options.scheduler and not dask_requirement(options.workers, options.scheduler):
        # before any work: the workers read the input and write the output themselves
        check_reachable(options.scheduler, [task_location(source)], task_location(output))
    with open_anndata(source) as store:
        return _apply(layout, store, output, remote, options, small_element, start, check)


def _apply(
    layout: Layout,
    store: AnnDataStore,
    output: Any,
    remote: bool,
    options: RunOptions,
    small_element: str | int,
    start: float,
    check: Callable[[Path | str], None] | None = None,
) -> ApplyResult:
    budget, workers, scheduler = options.budget, options.workers, options.scheduler
    progress, resume = options.progress, options.resume
    source = store.location
    survey = survey_opened(store)
    small = parse_size(small_element, "--whole-below")
    plan, memory_model = plan_within_budget(layout, survey, budget, workers, small)
    if layout.target.format == "h5ad" and (workers > 1 or scheduler):
        raise ApplyError(
            f"{output}: h5ad is one file and is written by one process; drop --workers/--scheduler"
        )
    needed = dask_requirement(workers, scheduler)
    if needed:
        raise ApplyError(needed)
    output_bytes = sum(e.stored_bytes or 0 for e in survey.elements)
    # a cluster's workers write the output where it goes: a local staging copy is the
    # driver's alone
    staging = staging_dir(output_bytes) if remote and not scheduler else None
    if not remote:
        check_free_space(Path(output).parent, output_bytes)

    result = ApplyResult(path=output, layout=layout.name, plan=plan)
    pipeline: str | None = options.codec_pipeline if layout.target.format == "zarr" else None
    pipeline = codec_pipeline_for(pipeline, source, *([] if staging else [output]))
    # a local zarr output journals its tasks, so a killed run can be resumed
    journal = None if remote or layout.target.format != "zarr" else resume_dir(Path(output))
    output_context: AbstractContextManager[Path | str]
    staged = None if staging is None else StagedRemoteOutput(str(output), staging, progress)
    if staged is not None:  # built and verified locally, then uploaded root last
        output_context = staged
    elif remote:
        output_context = remote_output(str(output))
    else:  # a journaled output is removed here on failure, and kept when interrupted
        output_context = atomic_output(Path(output), keep=resume or journal is not None)
    if resume and journal is None:
        raise ApplyError(f"{output}: --resume continues local zarr outputs only")
    stopped_notes: list[str] = []
    if journal is not None and not resume:  # left by a run that was stopped: starting clean
        stale = [p for p in (temporary_sibling(Path(output)), journal) if p.exists()]
        if stale:
            size = sum(footprint(p)[0] for p in stale)
            for path in stale:
                remove(path)
            stopped_notes.append(
                f"removed {stale[0]} ({human_size(size)}), kept by an earlier run that was "
                "stopped: without --resume a run starts clean"
            )
    saved = False  # the prepare phase's state is on disk: an interrupt keeps it for --resume
    state = fingerprint(
        source, layout=layout.sha256(), memory=budget, workers=workers, small=small,
        pipeline=pipeline, version=package_version(),
    ) if journal is not None else ""  # fmt: skip
    try:
        with output_context as tmp, codec_pipeline(pipeline):
            rewriter = Rewriter(
                layout, plan, survey, memory_model.per_worker, small, memory=memory_model
            )
            prepared = load(journal, state) if resume and journal and Path(tmp).exists() else None
            if prepared is not None:
                blocks = rewriter.restore(store, tmp, prepared)
            else:
                if journal is not None:
                    if resume and Path(tmp).exists():
                        stopped_notes.append(
                            f"--resume: {tmp} was made from other inputs or options (or "
                            "another annlayout version); removed, the run started clean"
                        )
                    remove(journal)
                    remove(Path(tmp))  # a partial output from other inputs or options
                blocks = rewriter.prepare(store, tmp)
                if journal is not None:
                    save(journal, rewriter.prepared(state, blocks))
            saved = journal is not None
            result.notes = [*stopped_notes, *memory_model.notes, *rewriter.notes]
            result.streamed = rewriter.streamed
            result.upgrades = rewriter.upgrades
            result.n_blocks = len(blocks)
            result.bytes_read = sum(b.nbytes for b in blocks) + rewriter.whole_bytes
            stores = Stores(task_location(source), task_location(tmp), pipeline, chosen_backend())
            tasks = rewriter.tasks(blocks, stores)
            if journal is not None:
                done = completed(journal) if prepared is not None else set()
                result.resumed_tasks = sum(task_key(task) in done for task in tasks)
                log = str(Path(journal, JOURNAL).resolve())
                tasks = [Journaled(task, log) for task in tasks if task_key(task) not in done]
            with opened(stores, rewriter.source_root, rewriter.target_root):
                execute(tasks, executor_for(workers, scheduler), progress)
            rewriter.finish(tmp)
            if staged is not None:  # up while verification reads the local copy; root after
                staged.send_objects()
            if options.verify:
                from annlayout.verify.compare import verify_report

                started = time.perf_counter()
                differences = verify_report(store, tmp, memory=budget).differences
                result.verify_seconds = time.perf_counter() - started
                if differences:
                    for partial in (Path(tmp), journal):
                        if partial is not None and not remote:
                            remove(partial)
                    raise ApplyError(
                        f"{output}: verification failed, output discarded: {differences[0]}"
                        + (f" (and {len(differences) - 1} more)" if len(differences) > 1 else "")
                    )
                if check is not None:
                    check(tmp)
                result.verify_seconds = time.perf_counter() - started
                result.verified = True
            result.bytes_written, _ = footprint(tmp)
    except Interrupted as interrupted:
        if saved:  # the partial output and its journal: --resume continues from them
            kept = [p for p in (temporary_sibling(Path(output)), journal) if p is not None]
            raise Interrupted(interrupted.signum, *kept) from None
        _discard(journal, output, resume)
        raise
    except BaseException:
        _discard(journal, output, resume)
        raise
    if journal is not None:
        remove(journal)
    result.seconds = time.perf_counter() - start
    result.peak_rss = peak_rss()
    return result


def _discard(journal: Path | None, output: Any, resume: bool) -> None:
    """A failed run leaves nothing, but a resumed one keeps its partial output for the next
    ``resume``."""
    if journal is not None and not resume:
        remove(journal)
        remove(temporary_sibling(Path(output)))


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Rewriter:
    """Builds the output store's structure and the list of blocks to copy."""

    def __init__(
        self,
        layout: Layout,
        plan: Plan,
        survey: Survey,
        budget: int,
        small: int,
        memory: MemoryPlan | None = None,
    ):
        self.layout = layout
        self.plan = plan
        self.plans = {e.path: e for e in plan.elements}
        self.budget = budget
        self.small = small
        self.memory = memory or memory_plan(plan, source_dtypes(survey), budget, 1, small)
        self.callback = LayoutCallback(layout)
        self.streamed: list[str] = []
        self.upgrades: list[str] = []  # legacy forms of the input, written in today's form
        self.whole_bytes = 0  # elements read whole (uncompressed bytes)
        # (element path, target group, part plans): other orientations, built after the blocks
        self.transposes: list[tuple[str, Any, dict[str, ArrayPlan]]] = []
        # (primary group, copy group, primary orientation): mirror records written at the end
        self.mirrors: list[tuple[Any, Any, str]] = []
        self.source_root: Any = None
        self.target_root: Any = None

    # -- phase 1 ------------------------------------------------------------------------

    def prepare(self, source: AnnDataStore, target: Path | str) -> list[Block]:
        """Write every element but the large arrays, create the large ones empty, and list
        the blocks that fill them. Small elements are copied as stored where the input is in
        today's encoding (:mod:`~annlayout.apply.verbatim`), else written through anndata
        and the layout's callback."""
        self.source_root = source.root
        self.target_root = _create_root(target, self.layout)
        # marked incomplete from the first write until finish(): object stores cannot rename
        set_json_attr(self.target_root, PROVENANCE_KEY, {"complete": False})
        if self.layout.target.format == "zarr":
            as_stored = plan_as_stored(self.source_root, self.plans, self._large)
            if as_stored.refused is None:
                return self._copy_as_stored(as_stored)
        return self._write_through_anndata(target)

    def _copy_as_stored(self, as_stored: AsStoredPlan) -> list[Block]:
        def stream(path: str, node: Any, into: Any, key: str, plan: ElementPlan) -> Iterator[Block]:
            check_interrupted()
            self.streamed.append(path)
            return self._stream(StandIn(node, path, plan.encoding), into, key, plan)

        backend = backend_of(self.target_root)
        blocks = list(
            copy_as_stored(self.source_root, self.target_root, self.plans, as_stored, backend,
                           self._large, stream, self._write_unit)
        )  # fmt: skip
        streamed = set(self.streamed)
        self.whole_bytes = sum(p.nbytes or 0 for p in self.plans.values() if p.path not in streamed)
        return blocks

    def _write_unit(self, path: str, node: Any, into: Any, key: str) -> None:
        """One element (or dataframe) that anndata changes on its round trip, read and
        written by anndata with the layout's callback."""
        check_interrupted()
        from anndata.experimental import write_dispatched
        from anndata.io import read_elem

        with _through_anndata(self.layout, lambda: path):
            try:
                value = read_elem(node)
            except Exception as err:
                raise ApplyError(f"{path}: cannot read the input: {_first_line(err)}") from None
            write_dispatched(into, key, value, callback=self.callback)

    def _write_through_anndata(self, target: Path | str) -> list[Block]:
        import anndata as ad

        try:
            upgraded = read_upgraded(self.source_root, large=self._large)
        except ElementReadError as err:
            raise ApplyError(f"{err.path}: cannot read the input: {err.reason}") from None
        self.upgrades = upgraded.upgrades
        blocks: list[Block] = []
        streaming = _StreamingCallback(self, upgraded, blocks)
        with _through_anndata(self.layout, lambda: streaming.current):
            ad.experimental.write_dispatched(
                self.target_root, "/", upgraded.adata, callback=streaming
            )
        missed = set(upgraded.stand_ins) - streaming.consumed
        if missed:  # anndata copied a placeholder instead of passing it on: never write zeros
            paths = ", ".join(upgraded.stand_ins[i].path for i in missed)
            raise ApplyError(f"{paths}: anndata did not pass the element through; not written")
        if backend_of(self.target_root) != "h5py":
            # anndata wrote the root's attributes (encoding-type: anndata) through a handle of
            # its own: this one's cached metadata is stale, and writing through it loses them
            import zarr

            self.target_root = zarr.open_group(zarr_store(target, read_only=False), mode="r+")
        set_json_attr(self.target_root, PROVENANCE_KEY, {"complete": False})
        self.whole_bytes = streaming.whole_bytes
        release_memory()  # what anndata freed writing the small elements, before the copy
        return blocks

    @property
    def notes(self) -> list[str]:
        return self.callback.notes

    def prepared(self, state: str, blocks: list[Block]) -> Prepared:
        """What :meth:`prepare` made, by path: saved so a killed run can be resumed."""
        return Prepared(
            fingerprint=state, blocks=blocks,
            transposes=[(path, into.name.strip("/"), arrays)
                        for path, into, arrays in self.transposes],
            mirrors=[(primary.name.strip("/"), copy.name.strip("/"), orientation)
                     for primary, copy, orientation in self.mirrors],
            notes=list(self.notes), streamed=self.streamed, upgrades=self.upgrades,
            whole_bytes=self.whole_bytes,
        )  # fmt: skip

    def restore(self, source: AnnDataStore, target: Path | str, state: Prepared) -> list[Block]:
        """Reopen the partial output a killed run prepared, instead of preparing it again."""
        import zarr

        self.source_root = source.root
        self.target_root = zarr.open_group(zarr_store(target, read_only=False), mode="r+")
        root = self.target_root
        self.transposes = [(path, root[group], arrays) for path, group, arrays in state.transposes]
        self.mirrors = [(root[p], root[c], orientation) for p, c, orientation in state.mirrors]
        self.callback.notes = list(state.notes)
        self.streamed, self.upgrades = state.streamed, state.upgrades
        self.whole_bytes = state.whole_bytes
        return state.blocks

    def _large(self, path: str, node: Any) -> bool:
        """Streamed in blocks rather than read whole: what the memory model streams
        (:func:`~annlayout.planning.memory.streamable`). A legacy element whose input path is
        not a planned path (``raw.X`` is planned as ``raw/X``) is judged from the input."""
        if path in self.plans:
            return streamable(self.plans[path], self.small)
        spec = get(encoding_of(node))
        if spec is not None and spec.sparse:
            return sparse_nbytes(node) > self.small
        size = math.prod(node.shape) * np.dtype(node.dtype).itemsize
        return is_numeric_array(node) and size > self.small

    def _stream(self, source: StandIn, target: Any, key: str, plan: ElementPlan) -> Iterator[Block]:
        node = source.node
        backend = backend_of(target)
        spec = lookup(plan.encoding, plan.path)
        if spec.sparse:
            _check_complete(plan.path, node)
            assert plan.orientation is not None  # a sparse element's plan has one
            group = target.require_group(key)
            write_sparse_attrs(group, plan.orientation, plan.shape or ())
            copies = [(plan.orientation, group, "")]
            if plan.copies:
                sub = group.require_group(plan.copies[0])
                write_sparse_attrs(sub, plan.copies[0], plan.shape or ())
                self.mirrors.append((group, sub, plan.orientation))
                copies.append((plan.copies[0], sub, f"{plan.copies[0]}/"))
            for orientation, into, prefix in copies:
                arrays = plan.parts(orientation)
                for name, array in arrays.items():
                    create_array(into, name, None, array, backend)
                if orientation == spec.orientation:  # same as the input: copied in blocks
                    into["indptr"][...] = node["indptr"][...].astype(arrays["indptr"].dtype)
                    for name in ("data", "indices"):
                        yield from self._blocks(
                            plan.path, f"{plan.path}/{prefix}{name}", arrays[name],
                            source=f"{source.path}/{name}", source_dtype=node[name].dtype,
                        )  # fmt: skip
                else:  # the other orientation: an out-of-core transpose, after the blocks
                    self.transposes.append((source.path, into, arrays))
        else:
            array = plan.arrays[0]
            created = create_array(target, key, None, array, backend)
            created.attrs.update(encoding_attrs("array"))
            yield from self._blocks(
                plan.path, plan.path, array, source=source.path, source_dtype=node.dtype
            )

    def _blocks(
        self,
        element: str,
        name: str,
        plan: ArrayPlan,
        source: str | None = None,
        source_dtype: Any = None,
    ) -> Iterator[Block]:
        """The memory model's blocks of array ``name`` (one per shard, or per run of whole
        chunks within the budget if unsharded)."""
        blocks = self.memory.array(name)
        if blocks is None:  # not foreseen by the model (checked here instead)
            blocks = array_blocks(element, source or name, name, plan, source_dtype, self.budget)
            if blocks.problem:
                raise ApplyError(blocks.problem)
        elif source and blocks.source != source:  # a legacy input path (raw.X/data)
            blocks = replace(blocks, source=source)
        yield from blocks.blocks()

    # -- phase 2 ------------------------------------------------------------------------

    def tasks(self, blocks: list[Block], stores: Stores) -> list[Task]:
        """The copy's tasks: the transposes first (the longest), then the blocks."""
        foreseen = {t.group: t for t in self.memory.transposes}
        transposes = []
        for path, into, arrays in self.transposes:
            group = into.name.strip("/")
            transpose = foreseen.get(group)
            if transpose is None:  # not foreseen by the model (checked here instead)
                plan = self.plans[path]
                orientation = lookup(plan.encoding, path).transposed.oriented(path)
                item = int(self.source_root[path]["data"].dtype.itemsize)
                transpose = plan_transpose(plan, orientation, arrays, item, self.budget, group)
                if transpose.problem:
                    raise ApplyError(transpose.problem)
            if transpose.source != path:  # a legacy input path (raw.X)
                transpose = replace(transpose, source=path)
            transposes.append(TransposeTask(transpose, stores))
        tasks: list[Task] = [*transposes, *(CopyTask(block, stores) for block in blocks)]
        if self.layout.target.format == "zarr":  # an h5ad file is written by one process
            check_whole_shards(tasks, self.target_root)
        return tasks

    # -- phase 3 ------------------------------------------------------------------------

    def finish(self, target: Path | str) -> None:
        root = self.target_root
        for primary, copy, orientation in self.mirrors:
            indptr = primary["indptr"][...]
            shape = sparse_shape(primary)
            record = mirror_record(shape, int(primary["data"].shape[0]), indptr, orientation)
            write_record(copy, record)
        set_json_attr(root, PROVENANCE_KEY, provenance(self.layout))
        if backend_of(root) == "h5py":
            root.close()
        else:
            if self.layout.target.consolidate_metadata:
                consolidate_metadata(target, self.layout.target.zarr_format)


@contextmanager
def _through_anndata(layout: Layout, current: Callable[[], str]) -> Iterator[None]:
    """anndata's writer with its settings for writing what it read, quiet, and its errors as
    one line naming the element being written (``current()``)."""
    with warnings.catch_warnings(), writing():
        warnings.filterwarnings("ignore", module="annlayout")
        warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            yield
        except (ApplyError, Interrupted):
            raise
        except Exception as err:  # anndata cannot write an element the target holds
            where = f"{current()}: " if current() else ""
            raise ApplyError(
                f"{where}cannot write it as {_target_text(layout)}: {_first_line(err)}"
            ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _check_complete(path: str, group: Any) -> None:
    """Missing chunks of a sparse matrix in a zarr input would read as zeros: refuse them.

    (Dense arrays may legitimately lack chunks that hold only the fill value.)
    """
    for part in ("data", "indices", "indptr"):
        array = group[part]
        if hasattr(array, "nchunks_initialized") and array.size:
            missing = array.nchunks - array.nchunks_initialized
            if missing:
                raise ApplyError(
                    f"{path}/{part}: {missing:,} of {array.nchunks:,} chunks are missing in the "
                    "input store"
                )


def task_writes(task: Task) -> list[tuple[str, int, int]]:
    """(array, start, stop) of what ``task`` writes along axis 0: a block its rows, a
    transpose its group's arrays whole (``stop`` -1: to the end)."""
    if isinstance(task, CopyTask):
        return [(task.block.target_array, task.block.start, task.block.stop)]
    if isinstance(task, TransposeTask):
        return [(f"{task.transpose.group}/{name}", 0, -1) for name in ("data", "indices", "indptr")]
    return []


def check_whole_shards(tasks: list[Task], target_root: Any) -> None:
    """No two of ``tasks`` write the same shard (or chunk, unsharded) of any array, and each
    writes whole ones: checked where the tasks are planned, as zarr-python loses data when
    two writers share a shard (zarr-python #3682)."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for task in tasks:
        for array, start, stop in task_writes(task):
            spans.setdefault(array, []).append((start, stop))
    for name, found in spans.items():
        array = target_root[name]
        length = int(array.shape[0]) if array.shape else 1
        unit = (
            int((getattr(array, "shards", None) or array.chunks or (1,))[0]) if array.shape else 1
        )
        whole = [(start, length if stop < 0 else stop) for start, stop in found]
        check_disjoint_units(name, whole, max(1, unit), length)


def task_location(path: Path | str) -> str:
    """A store's location as tasks open it: absolute for local paths (workers' cwd differ)."""
    return str(path) if is_url(str(path)) else str(Path(path).resolve())


def _create_root(path: Path | str, layout: Layout) -> Any:
    if layout.target.format == "h5ad":
        import h5py

        return h5py.File(path, "w")
    import zarr

    store = zarr_store(path, read_only=False)
    return zarr.open_group(store, mode="w", zarr_format=layout.target.zarr_format)


def _target_text(layout: Layout) -> str:
    target = layout.target
    return "h5ad" if target.format == "h5ad" else f"zarr v{target.zarr_format}"


class _StreamingCallback:
    """The layout's callback, except for the stand-ins of large arrays: those are created
    empty as planned and their blocks listed, to be copied from the input afterwards."""

    def __init__(self, rewriter: Rewriter, upgraded: Upgraded, blocks: list[Block]):
        self.rewriter, self.upgraded, self.blocks = rewriter, upgraded, blocks
        self.consumed: set[int] = set()
        self.whole_bytes = 0
        self.current = ""  # the element being written, for error messages
        self.marked = False

    def __call__(self, func, store, elem_name, elem, *, iospec, dataset_kwargs=None):
        check_interrupted()
        path = element_path(store, elem_name)
        self.current = path
        if not self.marked and path and not store.name.strip("/"):
            # anndata recreated the root (its attributes gone) before writing this, its
            # first child: mark it incomplete again before any element lands
            set_json_attr(store, PROVENANCE_KEY, {"complete": False})
            self.marked = True
        source = self.upgraded.stand_in(elem)
        rewriter = self.rewriter
        if source is None:
            if path in rewriter.plans:
                self.whole_bytes += rewriter.plans[path].nbytes or 0
            rewriter.callback(
                func, store, elem_name, elem, iospec=iospec, dataset_kwargs=dataset_kwargs
            )
            return
        plan = rewriter.plans.get(path)
        if plan is None:
            raise ApplyError(f"{path}: not in the plan of the input; rerun with --debug")
        self.consumed.add(id(elem))
        rewriter.streamed.append(path)
        self.blocks.extend(rewriter._stream(source, store, elem_name, plan))


__all__ = ["DEFAULT_MEMORY", "ApplyResult", "Block", "PlanError", "apply", "parse_size"]
