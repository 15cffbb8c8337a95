"""Copying the small elements of a store in today's encoding as stored, without anndata.

anndata reads such an element and writes it back unchanged, so apply can copy its arrays and
anndata's attributes as stored, with the planned chunks, shards and codecs, and skip anndata:
importing it (pandas, and dask and awkward where installed) is most of a small apply's time.

:func:`plan_as_stored` decides from metadata, before anything is written. A store with legacy
forms, unknown containers, an index that is not strings or a large element anndata would change
is refused whole: apply writes it through anndata and the layout's callback, as before. Within a
store copied as stored, a small element anndata changes on its round trip (record and awkward
arrays, nested categories, codes wider than pandas keeps; on pandas 3 string columns of a
dataframe, which may come back as nullable strings) is a *unit* written through anndata: the
element, or the dataframe that holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import numpy as np

from annlayout.format.encodings import (
    CONTAINER_ENCODINGS,
    PROVENANCE_KEY,
    SPARSE_ENCODINGS,
    attr,
    encoding_of,
    is_group,
    is_h5py,
    is_null_raw,
    legacy_forms,
    sparse_shape,
)
from annlayout.planning.plan import ArrayPlan, ElementPlan
from annlayout.write.arrays import Backend, create_array, create_group
from annlayout.write.callback import write_sparse

#: the encodings copied as stored, each in the one version anndata writes today
CURRENT = {
    "anndata": "0.1.0",
    "raw": "0.1.0",
    "dict": "0.1.0",
    "dataframe": "0.2.0",
    "array": "0.2.0",
    "string-array": "0.2.0",
    "numeric-scalar": "0.2.0",
    "string": "0.2.0",
    "categorical": "0.2.0",
    "nullable-integer": "0.1.0",
    "nullable-boolean": "0.1.0",
    "nullable-string-array": "0.1.0",
    "csr_matrix": "0.1.0",
    "csc_matrix": "0.1.0",
}
#: elements stored as one array, and whether it holds strings
SINGLE = {"array": False, "numeric-scalar": False, "string-array": True, "string": True}
STRING_ENCODINGS = ("string-array", "nullable-string-array")
#: the attributes anndata writes (other keys of the input are not anndata's to keep)
ANNDATA_ATTRS = (
    "encoding-type",
    "encoding-version",
    "_index",
    "column-order",
    "ordered",
    "na-value",
    "shape",
)
#: the groups anndata writes for every AnnData, empty or not
MAPPINGS = ("layers", "obsm", "obsp", "varm", "varp", "uns")

Stream = Callable[[str, Any, Any, str, ElementPlan], Iterator[Any]]
Unit = Callable[[str, Any, Any, str], None]  # (path, node, into, key): through anndata
Large = Callable[[str, Any], bool]


@dataclass
class AsStoredPlan:
    """How a store's small elements are written: ``refused`` says why not as stored at all;
    ``units`` are the paths, within a copy, written through anndata (with the reason)."""

    refused: str | None = None
    units: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _RoundTrip:
    """What the running pandas and anndata change when anndata reads and writes back."""

    str_columns: bool  # pandas 3: a string index (and h5ad string column) comes back as `str`,
    # which anndata 0.13 writes as a nullable string array
    na_value: bool  # anndata 0.13 writes nullable strings with an na-value, 0.12 without


def plan_as_stored(root: Any, plans: Mapping[str, ElementPlan], large: Large) -> AsStoredPlan:
    """What of ``root`` can be copied as stored, from its metadata; ``large`` says which
    elements apply streams (a large element anndata would change refuses the store)."""
    legacy = legacy_forms(root)
    if legacy:
        return AsStoredPlan(legacy[0])
    if PROVENANCE_KEY in root.attrs:
        return AsStoredPlan("an annlayout output (its records are not anndata's)")
    if _encoding(root) != ("anndata", CURRENT["anndata"]):
        return AsStoredPlan("the root is not anndata 0.1.0")
    round_trip = _RoundTrip(
        str_columns=_major_minor("pandas") >= (3, 0), na_value=_major_minor("anndata") >= (0, 13)
    )
    found = AsStoredPlan()
    seen: set[str] = set()
    found.refused = _check_group(root, "", plans, large, round_trip, seen, found.units)
    if found.refused is None and seen != set(plans):
        found.refused = f"{sorted(set(plans) - seen)[0]}: planned but not found"
    return found


def _major_minor(package: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version(package).split(".")[:2])


def _encoding(node: Any) -> tuple[str | None, str | None]:
    return encoding_of(node), attr(node, "encoding-version")


def _check_group(
    group: Any,
    prefix: str,
    plans: Mapping[str, ElementPlan],
    large: Large,
    round_trip: _RoundTrip,
    seen: set[str],
    units: dict[str, str],
) -> str | None:
    """Fills ``units``; returns why the store is refused, if it is."""
    dataframe = encoding_of(group) == "dataframe"
    if dataframe:
        index = attr(group, "_index")
        if index in group and encoding_of(group[index]) not in STRING_ENCODINGS:
            # the AnnData anndata makes turns it into strings, not its dataframe writer
            return f"{prefix}{index}: an index that is not strings"
    for key in sorted(group):  # zarr lists members in no fixed order: the same reason each time
        node, path = group[key], f"{prefix}{key}"
        encoding, encoding_version = _encoding(node)
        if is_null_raw(path, encoding):
            seen.add(path)
            continue
        if path in plans:
            seen.add(path)
            problem = _check_element(
                node, path, plans[path], encoding, encoding_version, round_trip, dataframe
            )
            if problem is not None and not dataframe and large(path, node):
                return f"{problem}, and too large to write through anndata"
            if problem is not None:
                units.setdefault(prefix.rstrip("/") if dataframe else path, problem)
        elif encoding in CONTAINER_ENCODINGS and CURRENT[encoding] == encoding_version:
            problem = _check_group(node, f"{path}/", plans, large, round_trip, seen, units)
            if problem is not None:
                return problem
        else:
            return f"{path}: {encoding} {encoding_version} is not copied as stored"
    return None


def _check_element(
    node: Any,
    path: str,
    plan: ElementPlan,
    encoding: str | None,
    encoding_version: str | None,
    round_trip: _RoundTrip,
    column: bool,
) -> str | None:
    if (
        plan.encoding != encoding
        or encoding in CONTAINER_ENCODINGS
        or CURRENT.get(str(encoding)) != encoding_version
    ):
        return f"{path}: {encoding} {encoding_version} is not copied as stored"
    if column and round_trip.str_columns and encoding == "string-array":
        return f"{path}: a string column anndata may write as a nullable string array"
    if encoding in SPARSE_ENCODINGS:
        return None  # its parts are converted as planned (orientation, index dtypes)
    if encoding in SINGLE:
        if encoding == "array" and not node.shape:
            return f"{path}: a 0-d array, which anndata writes as a scalar"
        return _check_array(node, path, plan.arrays[0], strings=SINGLE[encoding])
    if encoding == "nullable-string-array" and round_trip.na_value != ("na-value" in node.attrs):
        return f"{path}: a nullable string array anndata writes with another na-value"
    parts = {a.name: a for a in plan.arrays}
    if set(node) != set(parts):
        return f"{path}: parts {sorted(node)} are not the planned {sorted(parts)}"
    for name, part in parts.items():
        strings = name == "categories" and _is_string(node[name])
        strings = strings or (name == "values" and encoding == "nullable-string-array")
        problem = _check_array(node[name], f"{path}/{name}", part, strings=strings)
        if problem is not None:
            return problem
    if encoding == "categorical":
        codes = np.dtype(node["codes"].dtype)
        if codes != _pandas_codes_dtype(node["categories"].shape[0]):
            return f"{path}: {codes} codes, which pandas narrows"
    return None


def _check_array(node: Any, path: str, plan: ArrayPlan, strings: bool) -> str | None:
    if is_group(node):
        return f"{path}: a group where an array was planned"
    if strings:
        return None if _is_string(node) else f"{path}: {node.dtype} is not a string array"
    dtype = np.dtype(node.dtype)
    if dtype.kind not in "biufc" or dtype.names or np.dtype(plan.dtype) != dtype:
        return f"{path}: {dtype} is not copied as stored"
    return None


def _is_string(node: Any) -> bool:
    """Variable or fixed-length text (zarr reads vlen-utf8 as numpy's StringDType)."""
    if is_h5py(node):
        import h5py

        return h5py.check_string_dtype(node.dtype) is not None
    return np.dtype(node.dtype).kind in "TU"


def _pandas_codes_dtype(n_categories: int) -> np.dtype:
    """The codes dtype pandas gives a categorical of ``n_categories`` (the narrowest)."""
    for dtype in (np.int8, np.int16, np.int32):
        if n_categories < np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


# --------------------------------------------------------------------------- copying


def copy_as_stored(
    source: Any,
    target: Any,
    plans: Mapping[str, ElementPlan],
    as_stored: AsStoredPlan,
    backend: Backend,
    large: Large,
    stream: Stream,
    unit: Unit,
) -> Iterator[Any]:
    """Copy every element of ``source`` into ``target`` as ``as_stored`` (not refused) says:
    small ones whole, as stored (small sparse matrices converted as planned); ``large`` arrays
    by ``stream``, whose blocks are yielded; ``as_stored.units`` by ``unit``."""
    target.attrs.update(_anndata_attrs(source))
    yield from _copy_group(source, target, "", plans, as_stored.units, backend, large, stream, unit)
    for key in MAPPINGS:
        if key not in target:  # anndata writes them empty; a file may lack them
            create_group(target, key, {"encoding-type": "dict", "encoding-version": "0.1.0"})


def _copy_group(
    source: Any,
    target: Any,
    prefix: str,
    plans: Mapping[str, ElementPlan],
    units: Mapping[str, str],
    backend: Backend,
    large: Large,
    stream: Stream,
    unit: Unit,
) -> Iterator[Any]:
    # a dataframe's columns are written whole, as anndata reads them: never streamed
    dataframe = encoding_of(source) == "dataframe"
    for key in source:
        node, path = source[key], f"{prefix}{key}"
        plan = plans.get(path)
        if is_null_raw(path, encoding_of(node)):
            continue
        if path in units:
            unit(path, node, target, key)
        elif plan is None:  # a container
            group = create_group(target, key, _anndata_attrs(node))
            yield from _copy_group(
                node, group, f"{path}/", plans, units, backend, large, stream, unit
            )
        elif not dataframe and large(path, node):
            yield from stream(path, node, target, key, plan)
        elif plan.encoding in SPARSE_ENCODINGS:
            _copy_sparse(node, target, key, plan, backend)
        elif plan.encoding in SINGLE:
            _copy_array(node, target, key, plan.arrays[0], backend)
        else:
            group = create_group(target, key, _anndata_attrs(node))
            for part in plan.arrays:
                _copy_array(node[part.name], group, part.name, part, backend)


def _anndata_attrs(node: Any) -> dict[str, Any]:
    return {key: attr(node, key) for key in ANNDATA_ATTRS if key in node.attrs}


def _copy_sparse(node: Any, target: Any, key: str, plan: ElementPlan, backend: Backend) -> None:
    import scipy.sparse as sp

    cls = sp.csr_matrix if encoding_of(node) == "csr_matrix" else sp.csc_matrix
    parts = (np.asarray(node[name][()]) for name in ("data", "indices", "indptr"))
    write_sparse(target, key, cls(tuple(parts), shape=sparse_shape(node)), plan, backend)


def _copy_array(node: Any, target: Any, key: str, plan: ArrayPlan, backend: Backend) -> None:
    if is_h5py(node) and _is_string(node):
        values = np.asarray(node.asstr()[()], dtype=object)
    else:
        values = np.asarray(node[()])
    create_array(target, key, values, plan, backend, attributes=_anndata_attrs(node))
