"""AnnData's on-disk vocabulary, in one place: encodings, sparse parts, attributes, legacy forms.

Everything annlayout knows about how anndata lays an AnnData out in a store lives here: which
encodings are containers and which are composites of several arrays, what a sparse group
holds and how its attributes are written, how a JSON attribute is stored in HDF5 (which has
no mappings), and the *legacy forms* older anndata versions wrote, which anndata still reads.

Legacy forms are not translated by hand. :func:`read_upgraded` reads a store the way
anndata's own ``read_h5ad``/``read_zarr`` do (the same dispatch, the same backwards-compat
helpers, the same ``AnnData`` constructor), so a file is upgraded exactly as anndata itself
upgrades it, with one difference: large arrays are not read. In their place stand
*stand-ins*, empty objects of the right type and shape that remember where their values are,
so the rewrite can stream them and the verifier can compare them block by block.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annlayout.base.errors import ElementReadError
from annlayout.format.registry import Encoding, get, lookup, sparse_encoding

#: How surveys and plans name dtypes that have no fixed numpy item size.
STRING, RECORD, CATEGORY, AWKWARD = "string", "record", "category", "awkward"
#: Variable-length strings have no fixed item size; sizes are estimated with this many bytes.
STRING_ITEMSIZE_ESTIMATE = 16
PROVENANCE_KEY = "annlayout"


# --------------------------------------------------------------------------- attributes


def is_group(node: Any) -> bool:
    """A zarr or h5py group (as opposed to an array)."""
    return hasattr(node, "keys") and not hasattr(node, "dtype")


def is_h5py(node: Any) -> bool:
    return hasattr(node, "id") and hasattr(node, "file")


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
    return plain_value(getattr(node, "attrs", {}).get(key))  # in-memory arrays have none


def attrs(node: Any) -> dict[str, Any]:
    """All attributes of a node as plain JSON-able values."""
    return {k: plain_value(v) for k, v in node.attrs.items()}


def set_json_attr(node: Any, key: str, value: dict[str, Any]) -> None:
    """A mapping as an attribute: JSON text in HDF5 (no mappings there), as-is in zarr."""
    node.attrs[key] = json.dumps(value) if is_h5py(node) else value


def json_attr(node: Any, key: str) -> Any:
    """A mapping attribute written by :func:`set_json_attr` (None if absent)."""
    value = node.attrs.get(key)
    if isinstance(value, bytes):
        value = value.decode()
    return json.loads(value) if isinstance(value, str) else value


# --------------------------------------------------------------------------- encodings


def unholdable(dtype: Any) -> dict[str, str]:
    """The target formats that cannot store an array of ``dtype`` (``"zarr"``, ``"h5ad"``),
    each with the reason: h5py has no form for numpy datetimes, zarr (v2 and v3) none for a
    structured dtype with a subarray field (anndata < 0.7's obsm record arrays)."""
    dtype = np.dtype(dtype)
    limits = {}
    if dtype.kind in "Mm":
        limits["h5ad"] = f"h5ad (HDF5) has no form for numpy {dtype}"
    if dtype.names and any(dtype.fields[name][0].subdtype for name in dtype.names):
        limits["zarr"] = "zarr has no form for a record array with a subarray field"
    return limits


def encoding_of(node: Any) -> str | None:
    """A node's encoding, including the sparse groups anndata < 0.7 wrote without one."""
    encoding = attr(node, "encoding-type")
    if encoding is None and is_group(node) and "h5sparse_format" in node.attrs:
        return f"{attr(node, 'h5sparse_format')}_matrix"
    return encoding


def encoding_spec(node: Any, element: str | None = None) -> Encoding:
    """The registered encoding of a node (anndata < 0.8 wrote arrays without one); an unknown
    one is a one-line error naming the element."""
    where = element if element is not None else str(getattr(node, "name", "")).strip("/")
    return lookup(encoding_of(node) or "array", where)


def sparse_shape(node: Any) -> tuple[int, int]:
    """The shape of a sparse group: its ``shape`` attribute, or anndata < 0.7's text form."""
    shape = attr(node, "shape")
    if shape is None:
        shape = attr(node, "h5sparse_shape")
        if isinstance(shape, str):  # "[700 765]"
            shape = shape.strip("[]() ").replace(",", " ").split()
    rows, cols = (int(n) for n in shape)
    return rows, cols


def encoding_attrs(name: str) -> dict[str, str]:
    """The attributes anndata writes for an element of a registered encoding, in the version
    it writes today."""
    encoding = lookup(name, name)
    return {"encoding-type": encoding.name, "encoding-version": encoding.version}


def write_sparse_attrs(group: Any, orientation: str, shape: tuple[int, ...]) -> None:
    """The attributes that make a group an anndata sparse matrix."""
    name = sparse_encoding(orientation).name
    group.attrs.update({**encoding_attrs(name), "shape": [int(n) for n in shape]})


def sparse_class(orientation: str | None) -> type:
    """scipy's matrix class of an orientation."""
    import scipy.sparse as sp

    return sp.csr_matrix if orientation == "csr" else sp.csc_matrix


def sparse_nbytes(node: Any) -> int:
    """Uncompressed bytes of a sparse group's three parts, from metadata."""
    parts = lookup(encoding_of(node), node.name).parts
    return sum(
        int(np.prod(node[p].shape)) * np.dtype(node[p].dtype).itemsize for p in parts if p in node
    )


def is_numeric_array(node: Any) -> bool:
    """A plain numeric array (no strings, records or objects): what can be copied in blocks."""
    if is_group(node) or not hasattr(node, "dtype"):
        return False
    dtype = np.dtype(node.dtype)
    return dtype.names is None and dtype.kind in "biufc" and len(node.shape or ()) >= 1


# --------------------------------------------------------------------------- legacy forms


def legacy_forms(root: Any) -> list[str]:
    """The legacy forms a store holds, one line each, from metadata only (cheap)."""
    found = []
    for axis in ("obs", "var", "raw.var"):
        if axis in root and not is_group(root[axis]):
            found.append(f"{axis}: a compound dataset (anndata < 0.7), read as a dataframe")
    for axis in ("obs", "var", "raw/var"):
        if axis in root and is_group(root[axis]) and "__categories" in root[axis]:
            found.append(
                f"{axis}/__categories: categories beside the codes (anndata 0.7), read as "
                "categorical columns"
            )
    if any(key.startswith("raw.") for key in root):
        found.append("raw.X, raw.var, raw.varm (anndata < 0.7), read as raw")
    for key in ("obsm", "varm"):
        if key in root and not is_group(root[key]):
            found.append(f"{key}: one structured array (anndata < 0.7), read as one array each")
    if "uns" in root and is_group(root["uns"]):
        for name in ("distances", "connectivities"):
            if f"uns/neighbors/{name}" in root:
                found.append(f"uns/neighbors/{name} (scanpy < 1.5), read into obsp/{name}")
        if "obs" in root and not is_group(root["obs"]):
            keys = [k for k in root["uns"] if k.endswith("_categories")]
            found += [f"uns/{k} (anndata < 0.7), read as the column's categories" for k in keys]
    return found


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class StandIn:
    """Where the values of an element that was not read live: its stored node and path."""

    node: Any
    path: str  # in the store; may differ from where anndata puts it (raw.X -> raw/X)
    encoding: str  # csr_matrix, csc_matrix or array


@dataclass
class Upgraded:
    """A store as anndata reads it, with stand-ins for the large arrays."""

    adata: Any
    stand_ins: dict[int, StandIn] = field(default_factory=dict)  # id(placeholder) -> source
    upgrades: list[str] = field(default_factory=list)
    _keep: list[Any] = field(default_factory=list)  # placeholders stay alive: ids stay unique

    def stand_in(self, value: Any) -> StandIn | None:
        return self.stand_ins.get(id(value))


Large = Callable[[str, Any], bool]


def read_upgraded(root: Any, large: Large) -> Upgraded:
    """Read ``root`` as anndata's ``read_h5ad``/``read_zarr`` would, except that an array
    for which ``large(path, node)`` holds is replaced by an empty placeholder of its type and
    shape (a sparse matrix, or a zero-strided dense array), recorded as a :class:`StandIn`."""
    import anndata as ad
    from anndata.experimental import read_dispatched

    result = Upgraded(adata=None, upgrades=legacy_forms(root))
    read_dataframe = _legacy_dataframe_reader(root)

    def placeholder(path: str, node: Any) -> Any | None:
        spec = get(encoding_of(node) or "array")  # anndata < 0.8 wrote arrays without one
        if spec is not None and spec.sparse:
            if not large(path, node):
                return None
            cls = sparse_class(spec.orientation)
            value = cls(sparse_shape(node), dtype=np.dtype(node["data"].dtype))
        elif spec is not None and spec.dense and is_numeric_array(node) and large(path, node):
            value = np.broadcast_to(np.zeros((), dtype=node.dtype), tuple(node.shape))
        else:
            return None
        result.stand_ins[id(value)] = StandIn(node, path, spec.name)
        result._keep.append(value)
        return value

    def read(node: Any) -> Any:
        """read_elem, or a placeholder; what legacy helpers call for raw.X and raw.varm."""
        from anndata.io import read_elem

        found = placeholder(node.name.strip("/"), node)
        return found if found is not None else read_elem(node)

    inside_composite = [0]  # parts of categoricals, nullables, ... are never stand-ins

    def callback(func: Any, elem_name: str, elem: Any, iospec: Any) -> Any:
        try:
            return read_one(func, elem_name, elem, iospec)
        except ElementReadError:
            raise
        except Exception as err:  # the innermost element that failed is the one to name
            where = _named_in(err) or elem_name.strip("/") or "/"
            raise ElementReadError(where, first_line(err)) from err

    def read_one(func: Any, elem_name: str, elem: Any, iospec: Any) -> Any:
        path = elem_name.strip("/")
        if path and not inside_composite[0]:
            found = placeholder(path, elem)
            if found is not None:
                return found
        spec = get(iospec.encoding_type)
        if spec is not None and spec.holds_whole:
            inside_composite[0] += 1
            try:
                return func(elem)
            finally:
                inside_composite[0] -= 1
        if (spec is not None and spec.root) or elem_name.endswith("/"):
            parts: dict[str, Any] = {  # read_dispatched returns what the callback returns
                k: read_dispatched(elem[k], callback) for k in elem if not k.startswith("raw.")
            }
            return ad.AnnData(**parts)
        if elem_name.startswith("/raw."):
            return None
        if elem_name in ("/obs", "/var"):
            return read_dataframe(elem)
        if elem_name == "/raw":
            from anndata._io.utils import _read_legacy_raw

            if not is_group(elem):  # "null": written by write_dispatched for no raw
                return None

            # as read_h5ad; read_zarr drops a raw of 0 rows (an AnnData of no rows is falsy
            # to its `if modern_raw`), a quirk a rewrite should not turn into lost data
            modern = {
                k: read_dataframe(elem[k]) if k == "var" else read(elem[k])
                for k in ("X", "var", "varm")
                if k in elem
            }
            return _read_legacy_raw(root, modern, read_dataframe, read)
        return func(elem)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            adata: Any = read_dispatched(root, callback=callback)
        except ElementReadError:
            raise
        except Exception as err:  # raised before any element's callback: a spec anndata lacks
            raise ElementReadError(_named_in(err) or "/", first_line(err)) from err
        if "raw.X" in root:  # anndata < 0.7 kept raw beside the other elements
            from anndata._io.utils import _read_legacy_raw

            raw = ad.AnnData(**_read_legacy_raw(root, None, read_dataframe, read))
            raw.obs_names = adata.obs_names
            adata.raw = raw
        if "obs" in root and not is_group(root["obs"]):  # anndata < 0.7: categories in uns
            from anndata.compat import _clean_uns

            _clean_uns(adata)
    result.adata = adata
    return result


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _named_in(err: BaseException) -> str:
    """The element anndata names in its notes ("while reading key 'weird' of ... from /uns")."""
    import re

    for note in getattr(err, "__notes__", []):
        found = re.search(r"reading key '([^']*)' of .* from (\S*)", note)
        if found:
            parent = found.group(2).strip("/")
            return f"{parent}/{found.group(1)}" if parent else found.group(1)
    return ""


def _legacy_dataframe_reader(root: Any) -> Callable[[Any], Any]:
    """anndata's own obs/var reader for this backend: it reads compound datasets too."""
    if is_h5py(root):
        from anndata._io.h5ad import read_dataframe
    else:
        from anndata._io.zarr import read_dataframe
    return read_dataframe


def written_elements(upgraded: Upgraded) -> Iterator[tuple[str, str, Any]]:
    """``(path, encoding, value)`` of every element anndata writes for an AnnData, found by a
    dry run of its own writer into a throwaway in-memory group.

    Leaves are yielded and not written; a stand-in's value is its :class:`StandIn`. A
    dataframe is yielded (with the frame as its value, for its dtypes and column order)
    before its columns.
    """
    import anndata as ad
    import zarr

    found: list[tuple[str, str, Any]] = []

    def record(func, store, key, elem, *, iospec, dataset_kwargs):
        path = element_path(store, key)
        encoding = iospec.encoding_type
        source = upgraded.stand_in(elem)
        if source is not None:
            found.append((path, source.encoding, source))
        elif (spec := get(encoding)) is not None and spec.container:
            if spec.columns:  # yielded before its columns: its dtypes and column order
                found.append((path, encoding, elem))
            func(store, key, elem, dataset_kwargs={})
        else:
            found.append((path, encoding, elem))

    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3)
    with warnings.catch_warnings(), writing():
        warnings.simplefilter("ignore")
        ad.experimental.write_dispatched(group, "/", upgraded.adata, callback=record)
    yield from found


# --------------------------------------------------------------------------- writing


@contextmanager
def writing() -> Iterator[None]:
    """anndata's settings for writing what it has read: nullable strings (written by anndata
    0.13 with pandas 3, read by 0.12 as ``string``) must be written back as they are."""
    import anndata as ad

    if hasattr(ad.settings, "allow_write_nullable_strings"):
        with ad.settings.override(allow_write_nullable_strings=True):
            yield
    else:
        yield


def is_null_raw(path: str, encoding: str | None) -> bool:
    """No raw: anndata 0.12+ may store one as a "null" element, and writes nothing for it."""
    spec = get(encoding)
    return path == "raw" and spec is not None and spec.empty


def element_path(store: Any, key: str) -> str:
    """The element path (``obs/cell_type``) of a key written into a group, for any backend."""
    if key.startswith("/"):
        return key.strip("/")
    parent = store.name.strip("/")
    return f"{parent}/{key}" if parent else key
