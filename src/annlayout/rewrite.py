"""Writing with a layout: ``write`` (an in-memory AnnData) and ``apply`` (a store to a store).

Outputs appear atomically: everything is written into a temporary sibling that is renamed into
place only when complete, so a failed or interrupted run never leaves a half-written store
where a reader would find it.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annlayout import __version__
from annlayout.callback import LayoutCallback
from annlayout.plan import ElementPlan
from annlayout.spec import Layout, load_layout
from annlayout.storage import codec_pipeline as use_codec_pipeline
from annlayout.survey import PROVENANCE_KEY, NotAnnDataError, detect_format

TMP_SUFFIX = ".annlayout-tmp"


class ApplyError(RuntimeError):
    """Apply refused or failed; the message is one line that names the path."""


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
        "annlayout_version": __version__,
    }


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
                    zarr.consolidate_metadata(str(path), zarr_format=target.zarr_format)
    return WriteResult(
        path=path,
        layout=layout.name,
        seconds=time.perf_counter() - start,
        plans=callback.plans,
        notes=callback.notes,
    )


def read_input(path: str | Path) -> Any:
    """Read an AnnData store into memory, with one-line errors for what is not one."""
    import anndata as ad

    fmt = detect_format(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ad.read_h5ad(path) if fmt == "h5ad" else ad.read_zarr(path)
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise NotAnnDataError(f"{path}: not a readable AnnData store: {reason}") from None


def check_paths(source: Path, output: Path, *, overwrite: bool) -> None:
    source, output = source.resolve(), output.resolve()
    if output == source or source in output.parents:
        raise ApplyError(f"{output}: the output is the input or inside it; choose another path")
    if output.exists() and not overwrite:
        raise ApplyError(f"{output}: already exists (use --overwrite to replace it)")
    if not output.parent.is_dir():
        raise ApplyError(f"{output.parent}: the output's directory does not exist")


def apply(
    layout: str | Path | Layout,
    source: str | Path,
    output: str | Path,
    *,
    overwrite: bool = False,
    codec_pipeline: str | None = "zarrs",
) -> WriteResult:
    """Rewrite the AnnData store ``source`` into ``output`` with ``layout``.

    The input is only read. The output is written to a temporary sibling and renamed into place
    when complete; an existing output is replaced only with ``overwrite=True``.
    """
    layout = load_layout(layout)
    source, output = Path(source), Path(output)
    detect_format(source)
    check_paths(source, output, overwrite=overwrite)
    adata = read_input(source)
    tmp = output.with_name(f".{output.name}{TMP_SUFFIX}")
    remove(tmp)  # left by a run that was killed
    try:
        result = write(adata, tmp, layout, codec_pipeline=codec_pipeline)
        replace(tmp, output)
    except BaseException:
        remove(tmp)
        raise
    result.path = output
    return result


def replace(tmp: Path, output: Path) -> None:
    """Move ``tmp`` to ``output``; an existing output is set aside first, then removed."""
    if output.exists():
        old = output.with_name(f".{output.name}.annlayout-old")
        remove(old)
        output.rename(old)
        tmp.rename(output)
        remove(old)
    else:
        tmp.rename(output)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
