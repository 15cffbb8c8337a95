"""Writing an in-memory AnnData with a layout, through anndata's own writer and the callback."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annlayout.base.errors import ApplyError
from annlayout.format.encodings import PROVENANCE_KEY, set_json_attr
from annlayout.layout.spec import Layout, load_layout
from annlayout.planning.plan import ElementPlan
from annlayout.storage.pipeline import codec_pipeline as use_codec_pipeline
from annlayout.storage.remote import codec_pipeline_for, is_url, zarr_exists
from annlayout.storage.stores import check_output_name, consolidate_metadata, provenance, zarr_store
from annlayout.write.callback import LayoutCallback


@dataclass
class WriteResult:
    path: Path | str
    layout: str
    seconds: float
    plans: dict[str, ElementPlan] = field(default_factory=dict, repr=False)  # one per element
    notes: list[str] = field(default_factory=list)

    @property
    def n_objects(self) -> int:
        return sum(p.n_objects for p in self.plans.values())


def write(
    adata: Any,
    path: str | Path,
    layout: str | Path | Layout,
    *,
    codec_pipeline: str | None = "zarrs",
    overwrite: bool = False,
) -> WriteResult:
    """Write an in-memory AnnData to ``path`` with ``layout`` (a name, a path or a Layout).

    The store format (zarr v2/v3 or h5ad) is the layout's target, and ``path`` must be named
    for it (``.zarr``, ``.h5ad``). An existing store at ``path`` is refused unless
    ``overwrite``, as the command line does.
    """
    import anndata as ad

    layout = load_layout(layout)
    check_output_name(path, layout.target.format, layout.name)
    path = path if is_url(path) else Path(path)
    if not overwrite and (zarr_exists(path) if isinstance(path, str) else path.exists()):
        raise ApplyError(f"{path}: already exists (pass overwrite=True to replace it)")
    if isinstance(path, Path) and not path.parent.is_dir():  # as the command line refuses
        raise ApplyError(f"{path.parent}: the output's directory does not exist")
    codec_pipeline = codec_pipeline_for(codec_pipeline, path)
    callback = LayoutCallback(layout)
    start = time.perf_counter()
    target = layout.target
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="annlayout")
        if target.format == "h5ad":
            import h5py

            with h5py.File(path, "w") as root:
                ad.experimental.write_dispatched(root, "/", adata, callback=callback)
                set_json_attr(root, PROVENANCE_KEY, provenance(layout))
        else:
            import zarr

            with use_codec_pipeline(codec_pipeline):
                store = zarr_store(path, read_only=False)
                root = zarr.open_group(store, mode="w", zarr_format=target.zarr_format)
                ad.experimental.write_dispatched(root, "/", adata, callback=callback)
                set_json_attr(root, PROVENANCE_KEY, provenance(layout))
                if target.consolidate_metadata:
                    consolidate_metadata(path, target.zarr_format)
    return WriteResult(
        path=path,
        layout=layout.name,
        seconds=time.perf_counter() - start,
        plans=callback.plans,
        notes=callback.notes,
    )
