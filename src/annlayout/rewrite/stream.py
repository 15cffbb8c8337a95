"""Streaming apply: rewrite a store into a layout without holding any large element whole.

The rewrite has three phases:

1. *prepare* (main process): walk the input, create every group and array of the output with
   its planned chunks, shards, codecs and attributes; write small elements (uns, strings,
   categoricals, small columns) through anndata and the layout's callback; collect one
   :class:`Block` per output shard (or per run of chunks where unsharded) of every large array;
2. *copy* the blocks: independent tasks, run in order, on dask's threads (``workers``), or on a
   dask.distributed cluster (``scheduler``). Each block reads one slice of the input and
   writes whole shards of the output, so no shard is written twice and memory stays bounded;
3. *finish*: provenance, consolidated metadata, verification, and the atomic rename.
"""

from __future__ import annotations

import math
import resource
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ByteSize, TypeAdapter

from annlayout.callback import LayoutCallback
from annlayout.copies import (
    SequentialWriter,
    mirror_record,
    transposed_indptr,
    transposed_ranges,
    write_record,
)
from annlayout.encodings import (
    PROVENANCE_KEY,
    SPARSE_ENCODINGS,
    StandIn,
    Upgraded,
    element_path,
    encoding_of,
    is_numeric_array,
    read_upgraded,
    set_json_attr,
    sparse_nbytes,
    sparse_shape,
    write_sparse_attrs,
    writing,
)
from annlayout.errors import ElementReadError
from annlayout.optional import requirement
from annlayout.plan import ArrayPlan, ElementPlan, Plan, PlanError, make_plan
from annlayout.rewrite.atomic import (
    ApplyError,
    Interrupted,
    atomic_output,
    check_free_space,
    check_interrupted,
    check_paths,
    check_remote_paths,
    remote_output,
)
from annlayout.rewrite.memory import consolidate_metadata, provenance
from annlayout.rewrite.memory_limits import bound_malloc_arenas, release_memory
from annlayout.spec import Layout, load_layout
from annlayout.storage import backend_of, codec_pipeline, create_array
from annlayout.stores import detect_format, footprint, is_url, open_store
from annlayout.survey import Survey, survey_store

DEFAULT_MEMORY = "2GiB"  # holds a 512 MiB shard (archive) with room to encode it
#: Elements smaller than this go through anndata whole (strings, categoricals, uns, ...).
SMALL_ELEMENT = 16 << 20
#: A block holds its input slice, a converted copy and the encoded shard: about 3x its size.
BLOCK_OVERHEAD = 3


def parse_size(value: str | int, option: str = "--memory") -> int:
    try:
        return int(TypeAdapter(ByteSize).validate_python(value))
    except Exception:
        raise ApplyError(f"{option} {value!r}: not a byte size (e.g. 2GiB, 512MB, 0)") from None


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


@dataclass
class ApplyResult:
    path: Path
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


Progress = Callable[[str, int, int], None]  # (what, done, total)


def apply(
    layout: str | Path | Layout,
    source: str | Path,
    output: str | Path,
    *,
    overwrite: bool = False,
    codec_pipeline_name: str | None = "zarrs",
    memory: str | int = DEFAULT_MEMORY,
    workers: int = 1,
    scheduler: str | None = None,
    verify: bool = True,
    progress: Progress | None = None,
    small_element: str | int = SMALL_ELEMENT,
) -> ApplyResult:
    """Rewrite the AnnData store ``source`` into ``output`` with ``layout``, out of core.

    Large elements are copied block by block within ``memory`` (a byte size); the input is
    only read; ``output`` appears only when complete and (unless ``verify=False``) verified.
    """
    start = time.perf_counter()
    bound_malloc_arenas()  # best before codec threads start: the CLI calls it first
    layout = load_layout(layout)
    detect_format(source)
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
    budget = parse_size(memory)
    workers = max(1, int(workers))
    survey = survey_store(source)
    plan = make_plan(layout, survey)
    if layout.target.format == "h5ad" and (workers > 1 or scheduler):
        raise ApplyError(
            f"{output}: h5ad is one file and is written by one process; drop --workers/--scheduler"
        )
    if workers > 1 or scheduler:
        needed = (
            requirement("dask", "--scheduler")
            if scheduler
            else requirement("dask", "--workers", modules=("dask",))
        )
        if needed:
            raise ApplyError(needed)
    if not remote:
        check_free_space(output.parent, sum(e.stored_bytes or 0 for e in survey.elements))

    result = ApplyResult(path=output, layout=layout.name, plan=plan)
    with (
        remote_output(output) if remote else atomic_output(output) as tmp,
        codec_pipeline(codec_pipeline_name if layout.target.format == "zarr" else None),
    ):
        rewriter = Rewriter(
            layout, plan, survey, budget // workers, parse_size(small_element, "--whole-below")
        )
        blocks = rewriter.prepare(source, tmp)
        result.notes, result.streamed = rewriter.callback.notes, rewriter.streamed
        result.upgrades = rewriter.upgrades
        result.n_blocks = len(blocks)
        result.bytes_read = sum(b.nbytes for b in blocks) + rewriter.whole_bytes
        run_blocks(
            blocks, rewriter, source, tmp, workers=workers, scheduler=scheduler, progress=progress
        )
        rewriter.transpose(progress)
        rewriter.finish(tmp)
        if verify:
            from annlayout.rewrite.verify import verify_stores

            started = time.perf_counter()
            differences = verify_stores(source, tmp, memory=budget)
            result.verify_seconds = time.perf_counter() - started
            if differences:
                raise ApplyError(
                    f"{output}: verification failed, output discarded: {differences[0]}"
                    + (f" (and {len(differences) - 1} more)" if len(differences) > 1 else "")
                )
            result.verified = True
        result.bytes_written, _ = footprint(tmp)
    result.seconds = time.perf_counter() - start
    result.peak_rss = peak_rss()
    return result


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Rewriter:
    """Builds the output store's structure and the list of blocks to copy."""

    def __init__(self, layout: Layout, plan: Plan, survey: Survey, budget: int, small: int):
        self.layout = layout
        self.plan = plan
        self.plans = {e.path: e for e in plan.elements}
        self.budget = budget
        self.small = small
        self.callback = LayoutCallback(layout)
        self.streamed: list[str] = []
        self.upgrades: list[str] = []  # legacy forms of the input, written in today's form
        self.whole_bytes = 0  # elements read whole through anndata (uncompressed bytes)
        # (element path, target group, part plans): other orientations, built after the blocks
        self.transposes: list[tuple[str, Any, dict[str, ArrayPlan]]] = []
        # (primary group, copy group, primary orientation): mirror records written at the end
        self.mirrors: list[tuple[Any, Any, str]] = []
        self.source_root: Any = None
        self.target_root: Any = None
        self._source_format = survey.format

    # -- phase 1 ------------------------------------------------------------------------

    def prepare(self, source: Path | str, target: Path | str) -> list[Block]:
        """Write every element but the large arrays through anndata and the layout's
        callback, create the large ones empty, and list the blocks that fill them."""
        import anndata as ad

        self.source_root = open_store(source)
        self.target_root = _create_root(target, self.layout)
        # marked incomplete from the first write until finish(): object stores cannot rename
        set_json_attr(self.target_root, PROVENANCE_KEY, {"complete": False})
        try:
            upgraded = read_upgraded(self.source_root, large=self._large)
        except ElementReadError as err:
            raise ApplyError(f"{err.path}: cannot read the input: {err.reason}") from None
        self.upgrades = upgraded.upgrades
        blocks: list[Block] = []
        streaming = _StreamingCallback(self, upgraded, blocks)
        with warnings.catch_warnings(), writing():
            warnings.filterwarnings("ignore", module="annlayout")
            warnings.filterwarnings("ignore", category=FutureWarning)
            try:
                ad.experimental.write_dispatched(
                    self.target_root, "/", upgraded.adata, callback=streaming
                )
            except (ApplyError, Interrupted):
                raise
            except Exception as err:  # anndata cannot write an element the target holds
                where = f"{streaming.current}: " if streaming.current else ""
                raise ApplyError(
                    f"{where}cannot write it as {_target_text(self.layout)}: {_first_line(err)}"
                ) from None
        missed = set(upgraded.stand_ins) - streaming.consumed
        if missed:  # anndata copied a placeholder instead of passing it on: never write zeros
            paths = ", ".join(upgraded.stand_ins[i].path for i in missed)
            raise ApplyError(f"{paths}: anndata did not pass the element through; not written")
        set_json_attr(self.target_root, PROVENANCE_KEY, {"complete": False})
        self.whole_bytes = streaming.whole_bytes
        release_memory()  # what anndata freed writing the small elements, before the copy
        return blocks

    def _large(self, path: str, node: Any) -> bool:
        """Streamed in blocks rather than read whole: sparse matrices and numeric arrays
        over ``--whole-below``."""
        if encoding_of(node) in SPARSE_ENCODINGS:
            return sparse_nbytes(node) > self.small
        size = math.prod(node.shape) * np.dtype(node.dtype).itemsize
        return is_numeric_array(node) and size > self.small

    def _stream(self, source: StandIn, target: Any, key: str, plan: ElementPlan) -> Iterator[Block]:
        node = source.node
        _, settings = self.layout.rule_for(plan.path, plan.encoding)
        backend = backend_of(target)
        if plan.encoding in SPARSE_ENCODINGS:
            _check_complete(plan.path, node)
            group = target.require_group(key)
            write_sparse_attrs(group, plan.orientation, plan.shape or ())
            copies = [(plan.orientation, group, "", plan.arrays, settings.codecs)]
            if plan.copies:
                sub = group.require_group(plan.copies[0])
                write_sparse_attrs(sub, plan.copies[0], plan.shape or ())
                self.mirrors.append((group, sub, plan.orientation))
                codecs = settings.for_copy().codecs
                copies.append((plan.copies[0], sub, f"{plan.copies[0]}/", plan.copy_arrays, codecs))
            for orientation, into, prefix, array_plans, codecs in copies:
                arrays = {a.name.removeprefix(prefix): a for a in array_plans}
                for name, array in arrays.items():
                    array = array.model_copy(update={"name": name})
                    create_array(into, name, None, array, codecs, backend)
                if orientation == plan.encoding[:3]:  # same as the input: copied in blocks
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
            created = create_array(target, key, None, array, settings.codecs, backend)
            created.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
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
        """One block per shard, or per run of whole chunks within the budget if unsharded."""
        rows = plan.shape[0]
        # in memory at once: the slice as read (input dtype), its conversion (output dtype, if
        # it differs), and what encoding the shard holds (about twice the output bytes)
        read_item = np.dtype(source_dtype or plan.dtype).itemsize
        write_item = np.dtype(plan.dtype).itemsize
        converted = (
            write_item if np.dtype(source_dtype or plan.dtype) != np.dtype(plan.dtype) else 0
        )
        per_row = math.prod(plan.shape[1:])
        row_bytes = per_row * read_item  # what a block reads
        unit = (plan.shards or plan.chunks or (rows,))[0]
        unit_bytes = unit * per_row * (read_item + converted + 2 * write_item)
        if plan.shards and unit_bytes > self.budget:
            raise ApplyError(
                f"{name}: one shard is {unit * per_row * write_item / 2**20:,.0f} MiB; writing it needs "
                f"about {unit_bytes / 2**20:,.0f} MiB, more than --memory per worker "
                f"({self.budget / 2**20:,.0f} MiB): raise --memory or use smaller shards"
            )
        if not plan.shards:
            unit *= max(1, self.budget // max(1, unit_bytes))
        for start in range(0, rows, unit):
            stop = min(rows, start + unit)
            nbytes = (stop - start) * row_bytes
            yield Block(element, source or name, name, start, stop, plan.dtype, nbytes)

    # -- phase 3 ------------------------------------------------------------------------

    def transpose(self, progress: Progress | None = None) -> None:
        """Build the other orientation of sparse elements from the input, within the budget."""
        for path, into, arrays in self.transposes:
            source = self.source_root[path]
            shape = sparse_shape(source)
            n_minor = shape[1] if encoding_of(source) == "csr_matrix" else shape[0]
            writers = {
                name: SequentialWriter(into[name], _write_unit(arrays[name]), arrays[name].dtype)
                for name in ("data", "indices")
            }
            indptr = source["indptr"][...]
            total = int(indptr[-1]) if len(indptr) else 0
            # the budget holds: shard writes (3x a shard each), reading blocks of the input
            # (~40 bytes per nonzero in flight), and the pass buffers (the rest)
            writes = sum(
                _write_unit(a) * np.dtype(a.dtype).itemsize * BLOCK_OVERHEAD
                for name, a in arrays.items()
                if name != "indptr"
            )
            read_block = int(min(4 << 20, max(1 << 10, self.budget // 160)))
            passes = self.budget - writes - 40 * read_block
            if passes < self.budget // 8:
                raise ApplyError(
                    f"{path}: building the other orientation needs more than --memory "
                    f"({self.budget / 2**20:,.0f} MiB per worker) with these shards: raise "
                    "--memory or use smaller shards"
                )
            new_indptr = transposed_indptr(source["indices"], total, n_minor, read_block)
            for _, stop, data, major in transposed_ranges(
                source["data"], source["indices"], indptr, new_indptr,
                budget=passes, read_block=read_block,
            ):  # fmt: skip
                check_interrupted()
                writers["data"].write(data)
                writers["indices"].write(major)
                del data, major
                release_memory()
                if progress:
                    progress(f"transpose {path}", stop, total)
            for writer in writers.values():
                writer.close()
            into["indptr"][...] = new_indptr.astype(arrays["indptr"].dtype)

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
        if self._source_format == "h5ad":
            self.source_root.close()

    def copy(self, block: Block) -> int:
        check_interrupted()
        source = self.source_root[block.source_array]
        return copy_block(source, self.target_root[block.target_array], block)


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


def _write_unit(plan: ArrayPlan) -> int:
    """Elements written at once: a shard, or a chunk where unsharded."""
    return (plan.shards or plan.chunks or plan.shape or (1,))[0]


def copy_block(source: Any, target: Any, block: Block) -> int:
    try:
        values = np.asarray(source[block.start : block.stop])
    except Exception as err:  # a corrupt chunk: codecs raise many kinds of errors
        raise ApplyError(
            f"{block.source_array}: cannot read the input at {block.start:,}-{block.stop:,}: "
            f"{_first_line(err)}"
        ) from None
    if values.dtype != np.dtype(block.dtype):
        values = values.astype(block.dtype)
    target[block.start : block.stop] = values
    del values
    release_memory()
    return block.nbytes


def _create_root(path: Path, layout: Layout) -> Any:
    if layout.target.format == "h5ad":
        import h5py

        return h5py.File(path, "w")
    import zarr

    return zarr.open_group(str(path), mode="w", zarr_format=layout.target.zarr_format)


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

    def __call__(self, func, store, elem_name, elem, *, iospec, dataset_kwargs=None):
        check_interrupted()
        path = element_path(store, elem_name)
        self.current = path
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


# --------------------------------------------------------------------------- execution


def run_blocks(
    blocks: list[Block],
    rewriter: Rewriter,
    source: Path,
    target: Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    progress: Progress | None = None,
) -> None:
    total = sum(b.nbytes for b in blocks)
    done = 0

    def advance(nbytes: int) -> None:
        nonlocal done
        done += nbytes
        if progress:
            progress("copy", done, total)

    if progress:
        progress("copy", 0, total)
    if scheduler:
        _run_distributed(blocks, scheduler, source, target, advance)
    elif workers > 1:
        _run_threads(blocks, rewriter, workers, advance)
    else:
        for block in blocks:
            check_interrupted()
            advance(rewriter.copy(block))


def _run_threads(blocks: list[Block], rewriter: Rewriter, workers: int, advance) -> None:
    import dask
    from dask.callbacks import Callback

    class Advance(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if isinstance(result, int):
                advance(result)

    tasks = [dask.delayed(rewriter.copy, pure=False)(b) for b in blocks]
    with Advance():
        dask.compute(*tasks, scheduler="threads", num_workers=workers)


def _run_distributed(
    blocks: list[Block], address: str, source: Path, target: Path, advance
) -> None:
    from dask.distributed import Client, as_completed

    with Client(address) as client:
        futures = client.map(
            copy_block_by_path, blocks, source=str(source), target=str(target), pure=False
        )
        for future in as_completed(futures):
            try:
                check_interrupted()
            except Interrupted:
                client.cancel(futures)
                raise
            advance(future.result())


def copy_block_by_path(block: Block, *, source: str, target: str) -> int:
    """The task a dask.distributed worker runs: opens the stores itself (cached per process)."""
    with codec_pipeline("zarrs"):
        target_array = _open_target(target, block.target_array)
        return copy_block(_open_source(source)[block.source_array], target_array, block)


@cache
def _open_source(path: str) -> Any:
    return open_store(path)


def _open_target(path: str, name: str) -> Any:
    import zarr

    return zarr.open_array(store=path, path=name, mode="r+")


__all__ = ["DEFAULT_MEMORY", "ApplyResult", "Block", "PlanError", "apply", "copy_block_by_path"]
