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
    PROVENANCE_KEY,
    attr,
    encoding_attrs,
    encoding_of,
    is_group,
    is_h5py,
    is_null_raw,
    legacy_forms,
    sparse_class,
    sparse_shape,
)
from annlayout.format.registry import Dispatch, Encoding, get, lookup
from annlayout.planning.plan import ArrayPlan, ElementPlan
from annlayout.write.arrays import Backend, create_array, create_group
from annlayout.write.callback import write_sparse

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
    spec = get(encoding_of(root))
    if spec is None or not spec.root or attr(root, "encoding-version") != spec.version:
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
    dataframe = _is_dataframe(group)
    if dataframe:
        index = attr(group, "_index")
        if index in group and not _text_column(encoding_of(group[index])):
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
        elif _current_container(encoding, encoding_version):
            problem = _check_group(node, f"{path}/", plans, large, round_trip, seen, units)
            if problem is not None:
                return problem
        else:
            return f"{path}: {encoding} {encoding_version} is not copied as stored"
    return None


def _is_dataframe(group: Any) -> bool:
    spec = get(encoding_of(group))
    return spec is not None and spec.columns


def _text_column(encoding: str | None) -> bool:
    """A column of strings (plain or nullable): what anndata's index is."""
    spec = get(encoding)
    return spec is not None and not spec.scalar and (spec.strings or bool(spec.string_parts))


def _current_container(encoding: str | None, encoding_version: str | None) -> bool:
    spec = get(encoding)
    return spec is not None and spec.container and spec.version == encoding_version


def _check_element(
    node: Any,
    path: str,
    plan: ElementPlan,
    encoding: str | None,
    encoding_version: str | None,
    round_trip: _RoundTrip,
    column: bool,
) -> str | None:
    spec, check = get(encoding), _CHECKS.get(encoding)
    if plan.encoding != encoding or spec is None or check is None:
        return f"{path}: {encoding} {encoding_version} is not copied as stored"
    if spec.version != encoding_version:
        return f"{path}: {encoding} {encoding_version} is not copied as stored"
    return check(node, path, plan, spec, round_trip, column)


def _as_stored(encoding: Encoding) -> bool:
    """Copied as stored, in the version anndata writes today: every element but containers
    (walked) and those anndata's round trip changes (record and awkward arrays) or writes
    nothing for (null)."""
    changed = encoding.name in ("rec-array", "awkward-array")
    return not (encoding.container or encoding.empty or changed)


Check = Callable[[Any, str, ElementPlan, Encoding, _RoundTrip, bool], str | None]
#: why an element in today's encoding is not copied as stored (None: it is)
_CHECKS: Dispatch[Check] = Dispatch("check for copying as stored", covers=_as_stored)


@_CHECKS.register("csr_matrix", "csc_matrix")
def _check_sparse(node: Any, path: str, plan: ElementPlan, spec: Encoding, *_: Any) -> None:
    return None  # its parts are converted as planned (orientation, index dtypes)


@_CHECKS.register("numeric-scalar", "string")
def _check_single(node: Any, path: str, plan: ElementPlan, spec: Encoding, *_: Any) -> str | None:
    return _check_array(node, path, plan.arrays[0], strings=spec.strings)


@_CHECKS.register("array")
def _check_dense(node: Any, path: str, plan: ElementPlan, spec: Encoding, *rest: Any) -> str | None:
    if not node.shape:
        return f"{path}: a 0-d array, which anndata writes as a scalar"
    return _check_single(node, path, plan, spec, *rest)


@_CHECKS.register("string-array")
def _check_strings(
    node: Any, path: str, plan: ElementPlan, spec: Encoding, round_trip: _RoundTrip, column: bool
) -> str | None:
    if column and round_trip.str_columns:
        return f"{path}: a string column anndata may write as a nullable string array"
    return _check_single(node, path, plan, spec, round_trip, column)


@_CHECKS.register("nullable-integer", "nullable-boolean")
def _check_parts(node: Any, path: str, plan: ElementPlan, spec: Encoding, *_: Any) -> str | None:
    parts = {a.name: a for a in plan.arrays}
    if set(node) != set(parts):
        return f"{path}: parts {sorted(node)} are not the planned {sorted(parts)}"
    for name, part in parts.items():
        strings = name in spec.string_parts or (name == "categories" and _is_string(node[name]))
        problem = _check_array(node[name], f"{path}/{name}", part, strings=strings)
        if problem is not None:
            return problem
    return None


@_CHECKS.register("nullable-string-array")
def _check_nullable_strings(
    node: Any, path: str, plan: ElementPlan, spec: Encoding, round_trip: _RoundTrip, column: bool
) -> str | None:
    if round_trip.na_value != ("na-value" in node.attrs):
        return f"{path}: a nullable string array anndata writes with another na-value"
    return _check_parts(node, path, plan, spec, round_trip, column)


@_CHECKS.register("categorical")
def _check_categorical(
    node: Any, path: str, plan: ElementPlan, spec: Encoding, *rest: Any
) -> str | None:
    problem = _check_parts(node, path, plan, spec, *rest)
    if problem is not None:
        return problem
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
            create_group(target, key, encoding_attrs("dict"))


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
    dataframe = _is_dataframe(source)
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
        else:
            _COPIES.of(plan.encoding, path)(node, target, key, plan, backend)


def _anndata_attrs(node: Any) -> dict[str, Any]:
    return {key: attr(node, key) for key in ANNDATA_ATTRS if key in node.attrs}


Copy = Callable[[Any, Any, str, ElementPlan, Backend], None]
#: how a small element is copied as stored (the encodings _CHECKS passes)
_COPIES: Dispatch[Copy] = Dispatch("copy as stored", covers=_as_stored)


@_COPIES.register("csr_matrix", "csc_matrix")
def _copy_sparse(node: Any, target: Any, key: str, plan: ElementPlan, backend: Backend) -> None:
    spec = lookup(encoding_of(node), plan.path)
    parts = (np.asarray(node[name][()]) for name in spec.parts)
    matrix = sparse_class(spec.orientation)(tuple(parts), shape=sparse_shape(node))
    write_sparse(target, key, matrix, plan, backend)


@_COPIES.register("array", "numeric-scalar", "string-array", "string")
def _copy_single(node: Any, target: Any, key: str, plan: ElementPlan, backend: Backend) -> None:
    _copy_array(node, target, key, plan.arrays[0], backend)


@_COPIES.register("categorical", "nullable-integer", "nullable-boolean", "nullable-string-array")
def _copy_parts(node: Any, target: Any, key: str, plan: ElementPlan, backend: Backend) -> None:
    group = create_group(target, key, _anndata_attrs(node))
    for part in plan.arrays:
        _copy_array(node[part.name], group, part.name, part, backend)


def _copy_array(node: Any, target: Any, key: str, plan: ArrayPlan, backend: Backend) -> None:
    if is_h5py(node) and _is_string(node):
        values = np.asarray(node.asstr()[()], dtype=object)
    else:
        values = np.asarray(node[()])
    create_array(target, key, values, plan, backend, attributes=_anndata_attrs(node))
