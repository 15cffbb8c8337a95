"""A layout compiled into a callback for :func:`anndata.experimental.write_dispatched`.

The callback sizes every array from the element being written, with the same planning
functions ``annlayout plan`` uses, so it needs no survey and works for any AnnData::

    ad.experimental.write_dispatched(group, "/", adata, callback=annlayout.layout_callback(layout))

Containers (the AnnData, dicts, dataframes) pass through. Arrays get their planned
``dataset_kwargs``. Composite elements (categoricals, nullables, awkward arrays) are written by
anndata and their parts sized by the element's rule. Sparse matrices are written here, not by
anndata, because anndata gives ``data``, ``indices`` and ``indptr`` the same keyword arguments:
each part needs its own chunks, and the index dtypes and orientation come from the layout.
"""

from __future__ import annotations

import contextvars
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from annlayout.format.encodings import element_path, is_null_raw, write_sparse_attrs
from annlayout.format.registry import get
from annlayout.layout.spec import CopySettings, ElementSettings, Layout, ResolvedSettings
from annlayout.planning.codecs import describe
from annlayout.planning.plan import ArrayPlan, ElementPlan, Kind, plan_array, plan_element
from annlayout.planning.survey import describe_in_memory, in_memory_parts
from annlayout.write.arrays import array_kwargs, backend_of, create_array, target_of
from annlayout.write.copies import mirror_record, write_record


class LayoutCallback:
    """Callable passed to ``write_dispatched``; records the plan of every element it wrote."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.plans: dict[str, ElementPlan] = {}
        self._owners: dict[str, ResolvedSettings] = {}  # composite path -> its rule's settings
        self.notes: list[str] = []  # what the layout asked for and this write could not do
        self._warned: set[str] = set()

    def __call__(
        self,
        func: Callable[..., Any],
        store: Any,
        elem_name: str,
        elem: Any,
        *,
        iospec: Any,
        dataset_kwargs: Any = None,
    ) -> None:
        encoding = iospec.encoding_type
        if is_null_raw(element_path(store, elem_name), encoding):
            return  # write_h5ad and write_zarr write nothing; write_dispatched would a null
        spec = get(encoding)  # None: an encoding of a newer anndata, written as an array
        if spec is not None and spec.container:
            func(store, elem_name, elem, dataset_kwargs={})
            return
        path = element_path(store, elem_name)
        backend = backend_of(store)
        target = target_of(backend)
        self._check_target(target)

        parent = path.rpartition("/")[0]
        if parent in self._owners:  # a part of a categorical, nullable or awkward array
            settings = self._owners[parent]
            part = next(in_memory_parts(encoding, elem))
            kind: Kind = "scalar" if part.shape == () else "dense"
            plan = plan_array(path, part.shape, part.dtype, part.itemsize, settings, target, kind)
            func(store, elem_name, elem, dataset_kwargs=array_kwargs(plan, backend))
            return

        rule, settings = self.layout.rule_for(path, encoding)
        if spec is not None and spec.sparse:
            self._write_sparse(store, elem_name, path, encoding, elem, settings, rule, backend)
            return
        info = describe_in_memory(path, encoding, elem)
        element_plan = plan_element(info, settings, target, rule, self.layout)
        self.plans[path] = element_plan
        if spec is not None and spec.composite:
            self._owners[path] = settings
            try:
                func(store, elem_name, elem, dataset_kwargs={})
            finally:
                del self._owners[path]
            return
        plan = element_plan.arrays[0]
        func(store, elem_name, elem, dataset_kwargs=array_kwargs(plan, backend))

    def _write_sparse(
        self,
        store: Any,
        key: str,
        path: str,
        encoding: str,
        matrix: Any,
        settings: ResolvedSettings,
        rule: int | None,
        backend: Any,
    ) -> None:
        if hasattr(matrix, "compute"):  # a dask array of sparse blocks
            matrix = matrix.compute()
        info = describe_in_memory(path, encoding, matrix)
        plan = plan_element(info, settings, target_of(backend), rule, self.layout)
        self.plans[path] = plan
        write_sparse(store, key, matrix, plan, backend)

    def _check_target(self, target: Any) -> None:
        wanted = self.layout.target
        if wanted.format == target.format and (
            target.format == "h5ad" or wanted.zarr_format == target.zarr_format
        ):
            return
        if target.format == "h5ad":
            lost = _h5ad_losses(self.layout) or "settings h5ad cannot store are left out"
            lost += "; write to a zarr group, or use a layout that targets h5ad (h5ad-gzip)"
        else:
            lost = "settings that target cannot store are left out"
        self._warn_once(
            "target",
            f"layout {self.layout.name!r} targets {_target_text(wanted)} but is writing "
            f"{_target_text(target)}: {lost}",
        )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.notes.append(message)
            warnings.warn(message, UserWarning, stacklevel=3)


def _h5ad_losses(layout: Layout) -> str:
    """What of a zarr layout an h5ad file cannot store, in the layout's words: HDF5 has no
    shards, and of the codecs only gzip ships with every h5py."""
    primary = [layout.defaults, *layout.rules]
    settings: list[ElementSettings | CopySettings] = [*primary]
    settings += [s.copy_ for s in primary if s.copy_ is not None]
    codecs = sorted({
        describe([codec]) for s in settings for codec in s.codecs or () if codec.name != "gzip"
    } - {"none"})  # fmt: skip
    sharded = any(s.shards is not None and s.shards.enabled for s in settings)
    lost = ([f"its {', '.join(codecs)} compression (written uncompressed)"] if codecs else []) + (
        ["its shards"] if sharded else []
    )
    return " and ".join(lost) + " are left out" if lost else ""


def _target_text(target: Any) -> str:
    return "h5ad" if target.format == "h5ad" else f"zarr v{target.zarr_format}"


def write_sparse(store: Any, key: str, matrix: Any, plan: ElementPlan, backend: Any) -> None:
    """Write an in-memory CSR/CSC matrix as planned: its orientation, index dtypes, parts'
    chunks and codecs, and the second orientation if the plan has one."""
    if plan.orientation != matrix.format:
        matrix = matrix.tocsr() if plan.orientation == "csr" else matrix.tocsc()
    group = write_sparse_group(store, key, matrix, plan, backend)
    if plan.copies:
        write_copy_group(group, matrix, plan, backend)


def write_sparse_group(
    store: Any,
    key: str,
    matrix: Any,
    plan: ElementPlan,
    backend: Any,
) -> Any:
    """Write a CSR/CSC matrix as anndata's sparse encoding, each part as planned."""
    assert plan.orientation is not None  # a sparse element's plan has one
    group = store.require_group(key)
    write_sparse_attrs(group, plan.orientation, matrix.shape)
    write_parts(group, matrix, plan.parts(), backend)
    return group


def write_parts(group: Any, matrix: Any, parts: dict[str, ArrayPlan], backend: Any) -> None:
    """Write a sparse matrix's parts into ``group``, together where the backend allows.

    zarrs copies an array's values and, for a shard the array only partly fills, a shard of
    fill values on the calling thread while its encoding pool waits: with shards as large as
    an array (``archive``, ``analysis``) that is most of the write. Written together, one
    part's copies overlap another's encoding (``archive`` went from 1.34x to 1.06x of
    ``write_zarr``'s time, measured interleaved on a quiet machine). The values are already
    in memory; the extra is zarrs' transient copies. h5py writes one at a time anyway.
    """

    def write(name: str) -> None:
        values = getattr(matrix, name).astype(parts[name].dtype, copy=False)
        create_array(group, name, values, parts[name], backend)

    if backend == "h5py" or len(parts) < 2:
        for name in parts:
            write(name)
        return
    with ThreadPoolExecutor(len(parts), thread_name_prefix="annlayout-part") as pool:
        # each thread sees the caller's context (the store backend chosen for this run)
        futures = [pool.submit(contextvars.copy_context().run, write, name) for name in parts]
        for future in futures:
            future.result()


def write_copy_group(group: Any, primary: Any, plan: ElementPlan, backend: Any) -> Any:
    """Write the second orientation of an in-memory matrix inside its element group."""
    assert plan.orientation is not None  # a sparse element's plan has one
    orientation = plan.copies[0]
    copy = primary.tocsc() if orientation == "csc" else primary.tocsr()
    sub = group.require_group(orientation)
    write_sparse_attrs(sub, orientation, copy.shape)
    write_record(sub, mirror_record(primary.shape, primary.nnz, primary.indptr, plan.orientation))
    write_parts(sub, copy, plan.parts(orientation), backend)
    return sub


def layout_callback(layout: Layout) -> LayoutCallback:
    """A callback for :func:`anndata.experimental.write_dispatched` that applies ``layout``.

    Its ``plans`` attribute holds the plan of every element it wrote. (Composed here, not as a
    method of the layout models, which sit below everything that writes.)
    """
    return LayoutCallback(layout)
