"""What a store (zarr v2/v3, h5ad) or an in-memory AnnData holds, read from metadata only.

The survey is the planner's only view of a dataset: element paths, encodings, shapes, dtypes,
nonzero counts and, for stores, how each array is stored now. It never reads X's values.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from annlayout.errors import NotAnnDataError

CONTAINER_ENCODINGS = frozenset({"anndata", "raw", "dict", "dataframe"})
#: Elements stored as a group of arrays that belong together (one rule governs all parts).
COMPOSITE_ENCODINGS = frozenset(
    {
        "csr_matrix",
        "csc_matrix",
        "categorical",
        "nullable-integer",
        "nullable-boolean",
        "nullable-string-array",
        "awkward-array",
    }
)
PROVENANCE_KEY = "annlayout"
#: Variable-length strings have no fixed item size; sizes are estimated with this many bytes.
STRING_ITEMSIZE_ESTIMATE = 16


class ArrayInfo(BaseModel):
    """One stored array: a plain element, or a part (``data``, ``codes``, ...) of one."""

    name: str  # "" for an element that is itself an array
    shape: tuple[int, ...]
    dtype: str
    itemsize: int
    chunks: tuple[int, ...] | None = None
    shards: tuple[int, ...] | None = None
    codecs: str | None = None
    stored_bytes: int | None = None


class ElementInfo(BaseModel):
    path: str
    encoding: str
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    nnz: int | None = None
    arrays: list[ArrayInfo] = []

    @property
    def stored_bytes(self) -> int | None:
        sizes = [a.stored_bytes for a in self.arrays]
        return None if any(s is None for s in sizes) else sum(sizes)  # type: ignore[misc]

    def array(self, name: str) -> ArrayInfo:
        return next(a for a in self.arrays if a.name == name)


class Survey(BaseModel):
    source: str
    format: Literal["zarr", "h5ad", "memory"]
    zarr_format: int | None = None
    shape: tuple[int, int] | None = None
    elements: list[ElementInfo]
    provenance: dict[str, Any] | None = None

    def element(self, path: str) -> ElementInfo:
        return next(e for e in self.elements if e.path == path)


# --------------------------------------------------------------------------- stores


def is_url(location: str | Path) -> bool:
    """``s3://bucket/data.zarr`` and other fsspec URLs, as opposed to local paths."""
    return "://" in str(location)


def filesystem(url: str) -> Any:
    """The fsspec filesystem of a URL; credentials and endpoints come from the environment
    (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...), as for every fsspec/boto client."""
    from annlayout.optional import requirement

    needed = requirement("s3", f"{url}: reading and writing URLs")
    if needed:
        raise NotAnnDataError(needed)
    import fsspec

    fs, _ = fsspec.core.url_to_fs(url)
    return fs


def footprint(location: str | Path) -> tuple[int, int]:
    """(bytes, objects) of a store: a file, a directory, or everything under a URL."""
    if is_url(location):
        found = filesystem(str(location)).find(str(location), detail=True)
        return sum(int(info.get("size", 0)) for info in found.values()), len(found)
    path = Path(location)
    if path.is_file():
        return path.stat().st_size, 1
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def remote_zarr_exists(url: str) -> bool:
    fs = filesystem(url)
    return any(fs.exists(f"{url.rstrip('/')}/{name}") for name in ("zarr.json", ".zgroup"))


def detect_format(path: str | Path) -> Literal["zarr", "h5ad"]:
    """Which kind of AnnData store ``path`` is; a one-line error if it is none."""
    import h5py

    if not isinstance(path, str | Path):  # a zarr Store object (e.g. a measured store)
        return "zarr"
    if is_url(path):
        try:
            found = remote_zarr_exists(str(path))
        except Exception as err:
            raise NotAnnDataError(f"{path}: cannot reach: {str(err).splitlines()[0]}") from None
        if not found:
            raise NotAnnDataError(f"{path}: no zarr store there (no zarr.json/.zgroup)")
        return "zarr"
    path = Path(path)
    if not path.exists():
        raise NotAnnDataError(f"{path}: no such file or directory")
    if path.is_dir():
        if any((path / name).exists() for name in ("zarr.json", ".zgroup")):
            return "zarr"
        raise NotAnnDataError(f"{path}: a directory but not a zarr store (no zarr.json/.zgroup)")
    if h5py.is_hdf5(path):
        return "h5ad"
    raise NotAnnDataError(f"{path}: not an AnnData store (neither h5ad nor zarr)")


def open_store(path: str | Path, mode: str = "r") -> Any:
    """The root group of a store: a zarr Group or an h5py File."""
    fmt = detect_format(path)
    if fmt == "h5ad":
        import h5py

        return h5py.File(path, mode)
    import zarr

    try:
        if not isinstance(path, str | Path):
            return zarr.open_group(store=path, mode=mode)
        return zarr.open_group(str(path), mode=mode)  # URLs go through fsspec
    except Exception as err:  # zarr raises a variety of errors for broken metadata
        raise NotAnnDataError(f"{path}: cannot open as zarr: {err}") from None


def survey_store(path: str | Path) -> Survey:
    """Survey a zarr (v2 or v3) or h5ad store from its metadata."""
    fmt = detect_format(path)
    root = open_store(path)
    try:
        provenance = check_anndata_root(root, path)
        elements = list(_walk(root, ""))
        zarr_format = root.metadata.zarr_format if fmt == "zarr" else None
    finally:
        if fmt == "h5ad":
            root.close()
    return Survey(
        source=str(path),
        format=fmt,
        zarr_format=zarr_format,
        shape=_anndata_shape(elements),
        elements=elements,
        provenance=provenance,
    )


def check_anndata_root(root: Any, path: Any) -> dict[str, Any] | None:
    """Refuse what is not an AnnData store, or an annlayout store whose write did not finish.

    Returns the store's annlayout provenance, if any.
    """
    attrs = root.attrs
    if attrs.get("encoding-type") not in (None, "anndata") or not ("obs" in root and "var" in root):
        raise NotAnnDataError(f"{path}: not an AnnData store (no obs/var at its root)")
    provenance = attrs.get(PROVENANCE_KEY)
    if isinstance(provenance, str | bytes):
        provenance = json.loads(provenance)
    if isinstance(provenance, dict) and provenance.get("complete") is False:
        raise NotAnnDataError(
            f"{path}: an incomplete annlayout store (its apply did not finish); apply again"
        )
    return provenance


def is_group(node: Any) -> bool:
    """A zarr or h5py group (as opposed to an array)."""
    return hasattr(node, "keys") and not hasattr(node, "dtype")


def plain_value(value: Any) -> Any:
    """An attribute as plain JSON-able data (h5py gives numpy arrays, scalars and bytes)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [plain_value(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [plain_value(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def attr(node: Any, key: str) -> Any:
    """One attribute of a zarr or h5py node, as plain data (None if absent)."""
    return plain_value(node.attrs.get(key))


def _children(group: Any) -> list[str]:
    return sorted(group.keys())


def _walk(group: Any, prefix: str) -> Iterator[ElementInfo]:
    for key in _children(group):
        node = group[key]
        path = f"{prefix}{key}"
        encoding = attr(node, "encoding-type")
        if encoding is None:
            if is_group(node):  # anndata < 0.8 dicts, or groups written by other tools
                yield from _walk(node, path + "/")
            else:
                yield _array_element(node, path, "array")
            continue
        if encoding in CONTAINER_ENCODINGS:
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
    if encoding in ("csr_matrix", "csc_matrix"):  # a second orientation, as "csc/data", ...
        for copy in ("csr", "csc"):
            if copy in group and is_group(group[copy]):
                sub = group[copy]
                arrays += [_array_info(sub[k], f"{copy}/{k}") for k in _children(sub)]
    element = ElementInfo(path=path, encoding=encoding, arrays=arrays)
    names = {a.name: a for a in arrays}
    if encoding in ("csr_matrix", "csc_matrix"):
        element.shape = tuple(int(n) for n in attr(group, "shape"))
        element.nnz = names["data"].shape[0] if "data" in names else 0
        element.dtype = names["data"].dtype if "data" in names else None
    elif encoding == "categorical" and "codes" in names:
        element.shape, element.dtype = names["codes"].shape, "category"
    elif "values" in names:
        element.shape, element.dtype = names["values"].shape, names["values"].dtype
    elif encoding == "awkward-array":
        element.shape, element.dtype = (int(attr(group, "length")),), "awkward"
    return element


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
        )
    from annlayout.codecs import describe_stored

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
    )


def _dtype_text(dtype: Any) -> tuple[str, int]:
    np_dtype = np.dtype(dtype) if not isinstance(dtype, np.dtype) else dtype
    if np_dtype.kind in ("O", "T") or str(np_dtype).startswith("StringDType"):
        return "string", STRING_ITEMSIZE_ESTIMATE
    if np_dtype.kind == "U":
        return "string", np_dtype.itemsize
    return np_dtype.str.lstrip("<>|=") if np_dtype.names is None else "record", np_dtype.itemsize


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
    """Survey an in-memory AnnData by a dry run of anndata's own writer over its elements.

    The writer visits exactly the elements a real write would; containers are written into a
    throwaway in-memory zarr group (attributes only), leaves are recorded and skipped.
    """
    import anndata as ad
    import zarr

    elements: list[ElementInfo] = []

    def record(func, store, key, elem, *, iospec, dataset_kwargs):
        path = element_path(store, key)
        encoding = iospec.encoding_type
        if encoding in CONTAINER_ENCODINGS:
            func(store, key, elem, dataset_kwargs={})
        else:
            elements.append(describe_in_memory(path, encoding, elem))

    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ad.experimental.write_dispatched(group, "/", adata, callback=record)
    return Survey(source=source, format="memory", shape=tuple(adata.shape), elements=elements)


def element_path(store: Any, key: str) -> str:
    """The element path (``obs/cell_type``) of a key written into a group, for any backend."""
    if key.startswith("/"):
        return key.strip("/")
    parent = store.name.strip("/")
    return f"{parent}/{key}" if parent else key


def describe_in_memory(path: str, encoding: str, elem: Any) -> ElementInfo:
    """An :class:`ElementInfo` for an in-memory leaf element, without computing dask arrays."""
    parts = list(in_memory_parts(encoding, elem))
    element = ElementInfo(path=path, encoding=encoding, arrays=parts)
    if encoding in ("csr_matrix", "csc_matrix"):
        element.shape = tuple(int(n) for n in elem.shape)
        element.nnz = int(elem.nnz)
        element.dtype = _dtype_text(elem.dtype)[0]
    elif encoding == "categorical":
        element.shape, element.dtype = (len(elem),), "category"
    elif encoding == "awkward-array":
        element.shape, element.dtype = (len(elem),), "awkward"
    elif parts:
        element.shape, element.dtype = parts[0].shape, parts[0].dtype
    return element


def in_memory_parts(encoding: str, elem: Any) -> Iterator[ArrayInfo]:
    def info(name: str, shape: tuple, dtype: Any) -> ArrayInfo:
        text, itemsize = _dtype_text(dtype)
        return ArrayInfo(
            name=name, shape=tuple(int(n) for n in shape), dtype=text, itemsize=itemsize
        )

    if encoding in ("csr_matrix", "csc_matrix"):
        yield info("data", elem.data.shape, elem.data.dtype)
        yield info("indices", elem.indices.shape, elem.indices.dtype)
        yield info("indptr", elem.indptr.shape, elem.indptr.dtype)
    elif encoding == "categorical":
        yield info("codes", elem.codes.shape, elem.codes.dtype)
        yield info("categories", elem.categories.shape, elem.categories.to_numpy().dtype)
    elif encoding.startswith("nullable-"):
        values = elem.to_numpy(na_value="" if encoding == "nullable-string-array" else 0)
        dtype = values.dtype if encoding == "nullable-string-array" else elem.dtype.numpy_dtype
        yield info("values", (len(elem),), dtype)
        yield info("mask", (len(elem),), np.bool_)
    elif encoding == "awkward-array":
        import awkward as ak

        _, _, buffers = ak.to_buffers(elem)
        for name, buffer in buffers.items():
            yield info(name, np.asarray(buffer).shape, np.asarray(buffer).dtype)
    elif encoding in ("numeric-scalar", "string"):
        yield info("", (), np.asarray(elem).dtype)
    elif encoding == "null":
        yield info("", (), np.float32)
    else:  # array, string-array, rec-array (numpy, dask, h5py/zarr arrays, lists)
        shape = getattr(elem, "shape", None)
        dtype = getattr(elem, "dtype", None)
        if shape is None or dtype is None:
            array = np.asarray(elem)
            shape, dtype = array.shape, array.dtype
        yield info("", shape, dtype)
