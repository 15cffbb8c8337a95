"""What an AnnData store (zarr v2/v3, h5ad) or an in-memory AnnData holds, from metadata.

The survey is the planner's only view of a dataset: element paths, encodings, shapes, dtypes,
nonzero counts and, for stores, how each array is stored now. It never reads X's values. A
store in a legacy form (see :mod:`annlayout.format.encodings`) is listed as anndata reads it, which
is what a rewrite writes: its small elements are read, its arrays described from metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from annlayout.base.errors import NotAnnDataError
from annlayout.format.encodings import (
    AWKWARD,
    CATEGORY,
    RECORD,
    STRING,
    STRING_ITEMSIZE_ESTIMATE,
    StandIn,
    Upgraded,
    attr,
    encoding_of,
    is_group,
    legacy_forms,
    sparse_shape,
    unholdable,
    written_elements,
)
from annlayout.format.registry import Dispatch, Encoding, get
from annlayout.planning.survey_models import ArrayInfo, ElementInfo, Survey
from annlayout.storage.stores import AnnDataStore, open_anndata

# --------------------------------------------------------------------------- stores


def survey_store(location: str | Path | Any) -> Survey:
    """Survey a zarr (v2 or v3) or h5ad store from its metadata."""
    with open_anndata(location) as store:
        return survey_opened(store)


def survey_opened(store: AnnDataStore) -> Survey:
    """Survey a store already opened (and checked) by :func:`~annlayout.storage.stores.open_anndata`."""
    upgrades = legacy_forms(store.root)
    try:
        elements = describe_upgraded(store.upgraded()) if upgrades else list(_walk(store.root, ""))
    except Exception as err:  # a store anndata cannot read either
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NotAnnDataError(f"{store.location}: not a readable AnnData store: {reason}") from None
    return Survey(
        source=str(store.location),
        format=store.format,
        zarr_format=store.root.metadata.zarr_format if store.format == "zarr" else None,
        shape=_anndata_shape(elements),
        elements=elements,
        provenance=store.provenance,
        upgrades=upgrades,
    )


def _children(group: Any) -> list[str]:
    return sorted(group.keys())


def _walk(group: Any, prefix: str) -> Iterator[ElementInfo]:
    for key in _children(group):
        node = group[key]
        path = f"{prefix}{key}"
        encoding = encoding_of(node)
        if encoding is None:
            if is_group(node):  # anndata < 0.8 dicts, or groups written by other tools
                yield from _walk(node, path + "/")
            else:
                yield _array_element(node, path, "array")
            continue
        spec = get(encoding)  # an unknown one is described as found; anndata names it later
        if spec is not None and spec.container:
            yield from _walk(node, path + "/")
        elif is_group(node):
            yield _composite_element(node, path, encoding)
        else:
            yield _array_element(node, path, encoding)


def _array_element(node: Any, path: str, encoding: str) -> ElementInfo:
    info = _array_info(node, "")
    return ElementInfo(
        path=path, encoding=encoding, shape=info.shape, dtype=info.dtype, arrays=[info]
    )


def _composite_element(group: Any, path: str, encoding: str) -> ElementInfo:
    arrays = [_array_info(group[k], k) for k in _children(group) if not is_group(group[k])]
    spec = get(encoding)
    if spec is not None and spec.sparse:  # a second orientation, as "csc/data", ...
        for copy in ("csr", "csc"):
            if copy in group and is_group(group[copy]):
                sub = group[copy]
                arrays += [_array_info(sub[k], f"{copy}/{k}") for k in _children(sub)]
    element = ElementInfo(path=path, encoding=encoding, arrays=arrays)
    describe = _DESCRIBE_STORED.get(encoding) or _stored_values  # other tools' groups too
    describe(element, group, {a.name: a for a in arrays})
    return element


#: an element's shape and dtype from its stored group and its parts
_DESCRIBE_STORED: Dispatch[Callable[[ElementInfo, Any, dict[str, ArrayInfo]], None]] = Dispatch(
    "description", covers=lambda e: e.composite
)


@_DESCRIBE_STORED.register("csr_matrix", "csc_matrix")
def _stored_sparse(element: ElementInfo, group: Any, parts: dict[str, ArrayInfo]) -> None:
    element.shape = sparse_shape(group)
    element.nnz = parts["data"].shape[0] if "data" in parts else 0
    element.dtype = parts["data"].dtype if "data" in parts else None


@_DESCRIBE_STORED.register("categorical")
def _stored_categorical(element: ElementInfo, group: Any, parts: dict[str, ArrayInfo]) -> None:
    if "codes" in parts:
        element.shape, element.dtype = parts["codes"].shape, CATEGORY
    else:
        _stored_values(element, group, parts)


@_DESCRIBE_STORED.register("nullable-integer", "nullable-boolean", "nullable-string-array")
def _stored_values(element: ElementInfo, group: Any, parts: dict[str, ArrayInfo]) -> None:
    if "values" in parts:
        element.shape, element.dtype = parts["values"].shape, parts["values"].dtype


@_DESCRIBE_STORED.register("awkward-array")
def _stored_awkward(element: ElementInfo, group: Any, parts: dict[str, ArrayInfo]) -> None:
    if "values" in parts:
        _stored_values(element, group, parts)
    else:
        element.shape, element.dtype = (int(attr(group, "length")),), AWKWARD


def _array_info(node: Any, name: str) -> ArrayInfo:
    dtype, itemsize = _dtype_text(node.dtype)
    if hasattr(node, "id"):  # h5py
        codecs = "none" if node.compression is None else node.compression
        if node.compression_opts is not None:
            codecs += f"({node.compression_opts})"
        return ArrayInfo(
            name=name,
            shape=tuple(node.shape or ()),  # h5py.Empty (null) has no shape
            dtype=dtype,
            itemsize=itemsize,
            chunks=node.chunks,
            codecs=codecs,
            stored_bytes=int(node.id.get_storage_size()),
            unholdable=unholdable(node.dtype),
        )
    from annlayout.planning.codecs import describe_stored

    v3 = node.metadata.zarr_format == 3
    try:
        stored = int(node.nbytes_stored())
    except Exception:  # remote stores without listing
        stored = None
    return ArrayInfo(
        name=name,
        shape=tuple(node.shape),
        dtype=dtype,
        itemsize=itemsize,
        chunks=tuple(node.chunks) if node.shape else None,
        shards=tuple(node.shards) if v3 and node.shards else None,
        codecs=describe_stored(node.compressors),
        stored_bytes=stored,
        unholdable=unholdable(node.dtype),
    )


def _dtype_text(dtype: Any) -> tuple[str, int]:
    np_dtype = np.dtype(dtype) if not isinstance(dtype, np.dtype) else dtype
    if np_dtype.kind in ("O", "T") or str(np_dtype).startswith("StringDType"):
        return STRING, STRING_ITEMSIZE_ESTIMATE
    if np_dtype.kind == "U":
        return STRING, np_dtype.itemsize
    return np_dtype.str.lstrip("<>|=") if np_dtype.names is None else RECORD, np_dtype.itemsize


def _anndata_shape(elements: list[ElementInfo]) -> tuple[int, int] | None:
    by_path = {e.path: e for e in elements}
    if "X" in by_path and by_path["X"].shape and len(by_path["X"].shape) == 2:
        return by_path["X"].shape  # type: ignore[return-value]
    obs, var = _index_length(elements, "obs/"), _index_length(elements, "var/")
    return (obs, var) if obs is not None and var is not None else None


def _index_length(elements: list[ElementInfo], prefix: str) -> int | None:
    for element in elements:
        if element.path.startswith(prefix) and element.path.count("/") == 1 and element.shape:
            return element.shape[0]
    return None


# --------------------------------------------------------------------------- in memory


def survey_adata(adata: Any, source: str = "<memory>") -> Survey:
    """Survey an in-memory AnnData by a dry run of anndata's own writer over its elements."""
    elements = describe_upgraded(Upgraded(adata=adata))
    return Survey(source=source, format="memory", shape=tuple(adata.shape), elements=elements)


def describe_upgraded(upgraded: Upgraded) -> list[ElementInfo]:
    """The elements anndata writes for an AnnData: described from memory, or from the store
    where a stand-in holds their place (see :func:`annlayout.format.encodings.read_upgraded`)."""
    elements = []
    for path, encoding, value in written_elements(upgraded):
        spec = get(encoding)
        if isinstance(value, StandIn):
            if spec is not None and spec.sparse:
                elements.append(_composite_element(value.node, path, encoding))
            else:
                elements.append(_array_element(value.node, path, encoding))
        elif spec is None or not spec.columns:  # a dataframe's columns are its elements
            elements.append(describe_in_memory(path, encoding, value))
    return elements


def describe_in_memory(path: str, encoding: str, elem: Any) -> ElementInfo:
    """An :class:`ElementInfo` for an in-memory leaf element, without computing dask arrays."""
    parts = list(in_memory_parts(encoding, elem))
    element = ElementInfo(path=path, encoding=encoding, arrays=parts)
    spec = get(encoding)
    if spec is not None and spec.sparse:
        element.shape = tuple(int(n) for n in elem.shape)
        element.nnz = int(elem.nnz)
        element.dtype = _dtype_text(elem.dtype)[0]
    elif encoding in _IN_MEMORY_DTYPE:
        element.shape, element.dtype = (len(elem),), _IN_MEMORY_DTYPE[encoding]
    elif parts:
        element.shape, element.dtype = parts[0].shape, parts[0].dtype
    return element


def array_info(name: str, shape: tuple, dtype: Any) -> ArrayInfo:
    """An :class:`ArrayInfo` for an array of ``shape`` and ``dtype``, stored or not yet."""
    text, itemsize = _dtype_text(dtype)
    return ArrayInfo(
        name=name, shape=tuple(int(n) for n in shape), dtype=text, itemsize=itemsize,
        unholdable=unholdable(dtype),
    )  # fmt: skip


def in_memory_parts(encoding: str, elem: Any) -> Iterator[ArrayInfo]:
    """The arrays anndata writes for an in-memory element (one, unnamed, for a single array)."""
    parts = _PARTS_IN_MEMORY.get(encoding) or _array_parts  # other tools': as an array
    yield from parts(get(encoding), elem)


Parts = Callable[[Encoding | None, Any], Iterator[ArrayInfo]]
#: the arrays anndata writes for an in-memory element of each encoding
_PARTS_IN_MEMORY: Dispatch[Parts] = Dispatch("parts", covers=lambda e: not e.container)
#: how a survey names the dtype of composites whose values are not one numpy dtype
_IN_MEMORY_DTYPE = {"categorical": CATEGORY, "awkward-array": AWKWARD}


@_PARTS_IN_MEMORY.register("csr_matrix", "csc_matrix")
def _sparse_parts(spec: Encoding | None, elem: Any) -> Iterator[ArrayInfo]:
    assert spec is not None
    for name in spec.parts:
        part = getattr(elem, name)
        yield array_info(name, part.shape, part.dtype)


@_PARTS_IN_MEMORY.register("categorical")
def _categorical_parts(spec: Encoding | None, elem: Any) -> Iterator[ArrayInfo]:
    yield array_info("codes", elem.codes.shape, elem.codes.dtype)
    yield array_info("categories", elem.categories.shape, elem.categories.to_numpy().dtype)


@_PARTS_IN_MEMORY.register("nullable-integer", "nullable-boolean", "nullable-string-array")
def _nullable_parts(spec: Encoding | None, elem: Any) -> Iterator[ArrayInfo]:
    strings = spec is not None and "values" in spec.string_parts
    values = elem.to_numpy(na_value="" if strings else 0)
    dtype = values.dtype if strings else elem.dtype.numpy_dtype
    yield array_info("values", (len(elem),), dtype)
    yield array_info("mask", (len(elem),), np.bool_)


@_PARTS_IN_MEMORY.register("awkward-array")
def _awkward_parts(spec: Encoding | None, elem: Any) -> Iterator[ArrayInfo]:
    import awkward as ak

    _, _, buffers = ak.to_buffers(elem)
    for name, buffer in buffers.items():
        yield array_info(name, np.asarray(buffer).shape, np.asarray(buffer).dtype)


@_PARTS_IN_MEMORY.register("numeric-scalar", "string")
def _scalar_parts(spec: Encoding | None, elem: Any) -> Iterator[ArrayInfo]:
    yield array_info("", (), np.asarray(elem).dtype)


@_PARTS_IN_MEMORY.register("null")
def _null_parts(spec: Encoding | None, elem: Any) -> Iterator[ArrayInfo]:
    yield array_info("", (), np.float32)


@_PARTS_IN_MEMORY.register("array", "string-array", "rec-array")
def _array_parts(spec: Encoding | None, elem: Any) -> Iterator[ArrayInfo]:
    """numpy, dask, h5py/zarr arrays, lists"""
    shape = getattr(elem, "shape", None)
    dtype = getattr(elem, "dtype", None)
    if shape is None or dtype is None:
        array = np.asarray(elem)
        shape, dtype = array.shape, array.dtype
    yield array_info("", shape, dtype)
