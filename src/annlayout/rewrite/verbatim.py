"""Copying the small elements of a store that is in today's encoding as stored, without anndata.

anndata reads such an element and writes it back unchanged, so apply can copy its arrays and
attributes as stored, with the planned chunks, shards and codecs, and skip anndata: importing it
(pandas, and dask and awkward where installed) is most of a small apply's time.

:func:`plan_copy` decides from metadata, before anything is written. A store with legacy forms
(or unknown containers) is refused whole: apply writes it through anndata and the layout's
callback, as before. Within a copied store, an element anndata transforms on its round trip
(record arrays, awkward arrays, nested composites; on pandas 3 string columns of a dataframe,
which may come back as nullable strings) is a *unit* written through anndata: the element,
or the dataframe that holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import numpy as np

from annlayout.callback import write_sparse
from annlayout.encodings import (
    PROVENANCE_KEY,
    SPARSE_ENCODINGS,
    STRING,
    attrs,
    is_group,
    is_h5py,
    legacy_forms,
    sparse_shape,
)
from annlayout.plan import ArrayPlan, ElementPlan
from annlayout.storage import Backend, create_array, create_group

#: anndata's encodings (and the one version of each) that read and write back as stored
CONTAINERS = {"anndata": "0.1.0", "raw": "0.1.0", "dict": "0.1.0", "dataframe": "0.2.0"}
SINGLE = {"array": "0.2.0", "string-array": "0.2.0", "numeric-scalar": "0.2.0", "string": "0.2.0"}
COMPOSITE = {
    "categorical": "0.2.0",
    "nullable-integer": "0.1.0",
    "nullable-boolean": "0.1.0",
    "nullable-string-array": "0.1.0",
}
SPARSE = {"csr_matrix": "0.1.0", "csc_matrix": "0.1.0"}
#: the groups anndata writes for every AnnData, empty or not
MAPPINGS = ("layers", "obsm", "obsp", "varm", "varp", "uns")

Stream = Callable[[str, Any, Any, str, ElementPlan], Iterator[Any]]
Unit = Callable[[str, Any, Any, str], None]  # (path, node, into, key): through anndata


@dataclass
class CopyPlan:
    """How a store's elements are written: ``refused`` says why not copied as stored at all;
    ``units`` are the paths, within a copy, written through anndata (with the reason)."""

    refused: str | None = None
    units: dict[str, str] = field(default_factory=dict)


def plan_copy(root: Any, plans: Mapping[str, ElementPlan]) -> CopyPlan:
    """What of ``root`` can be copied as stored, from its metadata."""
    legacy = legacy_forms(root)
    if legacy:
        return CopyPlan(legacy[0])
    if PROVENANCE_KEY in root.attrs:
        return CopyPlan("an annlayout output (its records are not anndata's)")
    if _encoding(root) != ("anndata", CONTAINERS["anndata"]):
        return CopyPlan("the root is not anndata 0.1.0")
    stack = _Stack(
        # pandas 3 reads a string index (and an h5ad string column) as `str`, which anndata
        # 0.13 writes back as a nullable string array
        str_columns=_major_minor("pandas") >= (3, 0),
        # anndata 0.13 writes nullable strings with an na-value, 0.12 without
        na_value=_major_minor("anndata") >= (0, 13),
    )
    found = CopyPlan()
    seen: set[str] = set()
    found.refused = _check_group(root, "", plans, stack, seen, found.units)
    if found.refused is None and seen != set(plans):
        found.refused = f"{sorted(set(plans) - seen)[0]}: planned but not found"
    return found


@dataclass(frozen=True)
class _Stack:
    """What the running anndata and pandas change on a round trip."""

    str_columns: bool
    na_value: bool


def _major_minor(package: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version(package).split(".")[:2])


def _encoding(node: Any) -> tuple[Any, Any]:
    found = attrs(node)
    return found.get("encoding-type"), found.get("encoding-version")


def _check_group(
    group: Any,
    prefix: str,
    plans: Mapping[str, ElementPlan],
    stack: _Stack,
    seen: set[str],
    units: dict[str, str],
) -> str | None:
    """Fills ``units``; returns why the store is refused, if it is."""
    dataframe = _encoding(group)[0] == "dataframe"
    for key in group:
        node, path = group[key], f"{prefix}{key}"
        encoding, encoding_version = _encoding(node)
        if _absent(path, encoding):
            seen.add(path)
            continue
        if path in plans:
            seen.add(path)
            problem = _check_element(node, path, plans[path], encoding, encoding_version)
            if problem is None and dataframe and stack.str_columns and encoding == "string-array":
                problem = f"{path}: a string column anndata writes as a nullable string array"
            if (
                problem is None
                and encoding == "nullable-string-array"
                and stack.na_value != ("na-value" in node.attrs)
            ):
                problem = f"{path}: a nullable string array anndata writes with another na-value"
            if problem is not None:
                units.setdefault(prefix.rstrip("/") if dataframe else path, problem)
        elif is_group(node) and CONTAINERS.get(encoding) == encoding_version:
            problem = _check_group(node, f"{path}/", plans, stack, seen, units)
            if problem is not None:
                return problem
        else:
            return f"{path}: {encoding} {encoding_version} is not copied as stored"
    return None


def _check_element(
    node: Any, path: str, plan: ElementPlan, encoding: Any, encoding_version: Any
) -> str | None:
    known = {**SINGLE, **COMPOSITE, **SPARSE}
    if plan.encoding != encoding or known.get(encoding) != encoding_version:
        return f"{path}: {encoding} {encoding_version} is not copied as stored"
    if encoding in SPARSE:
        return None  # its parts are converted as planned (orientation, index dtypes)
    if encoding in SINGLE:
        return _check_array(node, path, plan.arrays[0])
    parts = {a.name: a for a in plan.arrays}
    if set(node) != set(parts):
        return f"{path}: parts {sorted(node)} are not the planned {sorted(parts)}"
    for name, part in parts.items():
        problem = _check_array(node[name], f"{path}/{name}", part)
        if problem is not None:
            return problem
    return None


def _check_array(node: Any, path: str, plan: ArrayPlan) -> str | None:
    if is_group(node):
        return f"{path}: a group where an array was planned"
    if plan.dtype == STRING:
        return None if _is_string(node) else f"{path}: {node.dtype} is not a string array"
    dtype = np.dtype(node.dtype)
    if dtype.kind not in "biufc" or dtype.names or np.dtype(plan.dtype) != dtype:
        return f"{path}: {dtype} is not copied as stored"
    return None


def _is_string(node: Any) -> bool:
    if is_h5py(node):
        import h5py

        return h5py.check_string_dtype(node.dtype) is not None
    return np.dtype(node.dtype).kind in "OTU"


# --------------------------------------------------------------------------- copying


def copy_elements(
    source: Any,
    target: Any,
    plans: Mapping[str, ElementPlan],
    copy: CopyPlan,
    backend: Backend,
    large: Callable[[str, Any], bool],
    stream: Stream,
    unit: Unit,
) -> Iterator[Any]:
    """Copy every element of ``source`` into ``target`` as ``copy`` (not refused) says: small
    ones whole, as stored; sparse matrices and ``large`` arrays by ``stream``, whose blocks are
    yielded; ``copy.units`` by ``unit``."""
    target.attrs.update({k: v for k, v in attrs(source).items() if k != PROVENANCE_KEY})
    yield from _copy_group(source, target, "", plans, copy.units, backend, large, stream, unit)
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
    large: Callable[[str, Any], bool],
    stream: Stream,
    unit: Unit,
) -> Iterator[Any]:
    # a dataframe's columns are written whole, as anndata reads them: never streamed
    dataframe = _encoding(source)[0] == "dataframe"
    for key in source:
        node, path = source[key], f"{prefix}{key}"
        plan = plans.get(path)
        if _absent(path, _encoding(node)[0]):
            continue
        if path in units:
            unit(path, node, target, key)
        elif plan is None:  # a container
            group = create_group(target, key, attrs(node))
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
            group = create_group(target, key, attrs(node))
            for part in plan.arrays:
                _copy_array(node[part.name], group, part.name, part, backend)


def _absent(path: str, encoding: Any) -> bool:
    """What anndata reads as nothing and writes nothing for: a null raw (anndata 0.12+)."""
    return path == "raw" and encoding == "null"


def _copy_sparse(node: Any, target: Any, key: str, plan: ElementPlan, backend: Backend) -> None:
    import scipy.sparse as sp

    encoding = _encoding(node)[0]
    cls = sp.csr_matrix if encoding == "csr_matrix" else sp.csc_matrix
    parts = (np.asarray(node[name][()]) for name in ("data", "indices", "indptr"))
    write_sparse(target, key, cls(tuple(parts), shape=sparse_shape(node)), plan, backend)


def _copy_array(node: Any, target: Any, key: str, plan: ArrayPlan, backend: Backend) -> None:
    if plan.dtype == STRING and is_h5py(node):
        values = np.asarray(node.asstr()[()], dtype=object)
    else:
        values = np.asarray(node[()])
    create_array(target, key, values, plan, backend, attributes=attrs(node))
