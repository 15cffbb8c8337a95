"""Writing an in-memory AnnData with a layout, through anndata's own writer and the callback."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from annlayout.callback import LayoutCallback
from annlayout.encodings import PROVENANCE_KEY
from annlayout.plan import ElementPlan
from annlayout.spec import Layout, load_layout
from annlayout.storage import codec_pipeline as use_codec_pipeline
from annlayout.version import package_version


@dataclass
class WriteResult:
    path: Path
    layout: str
    seconds: float
    plans: dict[str, ElementPlan] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n_objects(self) -> int:
        return sum(p.n_objects for p in self.plans.values())


def provenance(layout: Layout) -> dict[str, Any]:
    return {
        "layout": layout.name,
        "layout_sha256": layout.sha256(),
        "resolved_layout": layout.canonical(),
        "annlayout_version": package_version(),
        "complete": True,  # the last write; object stores have no rename to mark completion
    }


def consolidate_metadata(path: str | Path, zarr_format: Literal[2, 3]) -> None:
    """Write a zarr store's consolidated metadata (one request opens it).

    zarr warns, on every call for a v3 store, that its specification does not cover
    consolidated metadata yet; a layout asks for it on purpose, so the warning is silenced
    here, for this call only, rather than for every program that imports annlayout.
    """
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Consolidated metadata is currently not part", category=UserWarning
        )
        zarr.consolidate_metadata(str(path), zarr_format=zarr_format)


def write(
    adata: Any,
    path: str | Path,
    layout: str | Path | Layout,
    *,
    codec_pipeline: str | None = "zarrs",
) -> WriteResult:
    """Write an in-memory AnnData to ``path`` with ``layout`` (a name, a path or a Layout).

    The store format (zarr v2/v3 or h5ad) is the layout's target. ``path`` is overwritten.
    """
    import anndata as ad

    layout = load_layout(layout)
    path = Path(path)
    callback = LayoutCallback(layout)
    start = time.perf_counter()
    target = layout.target
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="annlayout")
        if target.format == "h5ad":
            import h5py

            with h5py.File(path, "w") as root:
                ad.experimental.write_dispatched(root, "/", adata, callback=callback)
                root.attrs[PROVENANCE_KEY] = json.dumps(provenance(layout))
        else:
            import zarr

            with use_codec_pipeline(codec_pipeline):
                root = zarr.open_group(str(path), mode="w", zarr_format=target.zarr_format)
                ad.experimental.write_dispatched(root, "/", adata, callback=callback)
                root.attrs[PROVENANCE_KEY] = provenance(layout)
                if target.consolidate_metadata:
                    consolidate_metadata(path, target.zarr_format)
    return WriteResult(
        path=path,
        layout=layout.name,
        seconds=time.perf_counter() - start,
        plans=callback.plans,
        notes=callback.notes,
    )
