"""Creating arrays as planned, in zarr v2, zarr v3 or h5py groups.

One place turns an :class:`~annlayout.planning.plan.ArrayPlan` into the keyword arguments each backend
wants, so the callback (via anndata's writers) and annlayout's own writers agree.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from annlayout.format.encodings import STRING, is_h5py
from annlayout.layout.spec import Target
from annlayout.planning.codecs import h5py_kwargs, zarr_v2_compressor, zarr_v3_compressors
from annlayout.planning.plan import ArrayPlan

Backend = Literal["zarr2", "zarr3", "h5py"]


def backend_of(group: Any) -> Backend:
    import h5py

    if isinstance(group, h5py.Group | h5py.File):
        return "h5py"
    return "zarr3" if group.metadata.zarr_format == 3 else "zarr2"


def target_of(backend: Backend, consolidate: bool = False) -> Target:
    """The storage target a group can hold (the callback plans against what it is given)."""
    if backend == "h5py":
        return Target(format="h5ad", consolidate_metadata=False)
    return Target(format="zarr", zarr_format=3 if backend == "zarr3" else 2,
                  consolidate_metadata=consolidate)  # fmt: skip


def array_kwargs(plan: ArrayPlan, backend: Backend) -> dict[str, Any]:
    """Keyword arguments for anndata's dataset creation (``dataset_kwargs``), as planned."""
    codecs = plan.codec_models
    if plan.chunks is None:
        # planned contiguous (scalars; empty arrays in h5ad): anndata refuses chunks or shards
        # for scalars, and zarr would compress them by default
        return {} if backend == "h5py" else {"compressors": None}
    if backend == "h5py":
        return {"chunks": plan.chunks, **h5py_kwargs(codecs)}
    if backend == "zarr2":
        return {"chunks": plan.chunks, "compressors": zarr_v2_compressor(codecs)}
    compressors = zarr_v3_compressors(codecs)
    # shards=None explicitly: anndata 0.13 auto-shards when the key is missing
    return {"chunks": plan.chunks, "shards": plan.shards, "compressors": compressors or None}


def create_array(
    group: Any,
    name: str,
    values: np.ndarray | None,
    plan: ArrayPlan,
    backend: Backend,
    attributes: dict[str, Any] | None = None,
) -> Any:
    """Create ``group[name]`` as planned and, if given, write ``values`` into it whole."""
    kwargs = array_kwargs(plan, backend)
    if backend == "h5py":
        import h5py

        dtype = h5py.string_dtype() if plan.dtype == STRING else np.dtype(plan.dtype)
        array = group.create_dataset(name, data=values, shape=plan.shape, dtype=dtype, **kwargs)
        array.attrs.update(attributes or {})
        return array
    dtype = str if plan.dtype == STRING else np.dtype(plan.dtype)
    array = group.create_array(name, shape=plan.shape, dtype=dtype, attributes=attributes, **kwargs)
    if values is not None and values.size:
        array[...] = values
    return array


def create_group(group: Any, name: str, attributes: dict[str, Any]) -> Any:
    """``group[name]`` with ``attributes``, in one metadata write where the backend can."""
    if is_h5py(group):
        created = group.create_group(name)
        created.attrs.update(attributes)
        return created
    return group.create_group(name, attributes=attributes)
