"""annlayout: declarative storage layouts for AnnData stores.

import annlayout
layout = annlayout.load_layout("ml-minibatch")
plan = annlayout.plan(layout, "data.h5ad")
annlayout.write(adata, "data.zarr", layout)
ad.experimental.write_dispatched(group, "/", adata, callback=layout.callback())
"""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("annlayout")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

from annlayout.defaults import VERIFY_MEMORY
from annlayout.errors import AnnlayoutError
from annlayout.plan import Plan, PlanError, make_plan
from annlayout.reader import Dataset, open
from annlayout.rewrite import ApplyError, ApplyResult, WriteResult, apply, verify_stores, write
from annlayout.spec import Layout, LayoutError, json_schema, load_layout, shipped_layouts
from annlayout.survey import Survey, survey_adata, survey_store

# zarr warns on every write and open of consolidated zarr v3 metadata that the format does not
# specify it yet; layouts ask for consolidation on purpose (one request to open a store), and
# anndata writes and reads it too, so the warning tells annlayout's users nothing.
warnings.filterwarnings(
    "ignore", message="Consolidated metadata is currently not part", category=UserWarning
)


def survey(source) -> Survey:
    """Survey a store path or an in-memory AnnData (metadata only)."""
    if isinstance(source, str | bytes) or hasattr(source, "__fspath__"):
        return survey_store(source)
    return survey_adata(source)


def plan(layout, source) -> Plan:
    """Plan ``layout`` (a name, path or Layout) against a store path or an in-memory AnnData."""
    return make_plan(load_layout(layout), survey(source))


def verify(source, rewritten, *, memory: int | str = VERIFY_MEMORY) -> list[str]:
    """Elements that differ between two AnnData stores (one line each); empty when equal.

    ``memory`` (bytes, or a size such as ``"512MiB"``) bounds the blocks compared at once."""
    return verify_stores(source, rewritten, memory=memory)


__all__ = [
    "AnnlayoutError",
    "ApplyError",
    "ApplyResult",
    "Dataset",
    "Layout",
    "LayoutError",
    "Plan",
    "PlanError",
    "Survey",
    "WriteResult",
    "__version__",
    "apply",
    "json_schema",
    "load_layout",
    "make_plan",
    "open",
    "plan",
    "shipped_layouts",
    "survey",
    "verify",
    "write",
]
