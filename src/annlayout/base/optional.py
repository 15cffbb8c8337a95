"""Features that need packages beyond the core install, and the one-line error when missing.

dask (threads and clusters for ``apply``, anndata's ``read_lazy`` in ``bench``), xarray
(``read_lazy``'s dataframes) and obstore or fsspec/s3fs (``s3://`` URLs) are extras, so a plain install
stays small; asking for the feature without them says which extra to install.
"""

from __future__ import annotations

from importlib.util import find_spec

EXTRAS = {
    "dask": ("dask", "distributed"),
    "s3": ("obstore", "fsspec", "s3fs"),
    "bench": ("dask", "xarray"),
    "torch": ("torch",),
    "jax": ("jax",),
}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (found, not imported)."""
    return find_spec(module) is not None


def missing(extra: str, modules: tuple[str, ...] | None = None) -> list[str]:
    """The packages of ``extra`` (or just ``modules`` of it) that are not installed."""
    return [name for name in modules or EXTRAS[extra] if find_spec(name) is None]


def requirement(extra: str, feature: str, modules: tuple[str, ...] | None = None) -> str | None:
    """None when ``extra`` (or the ``modules`` of it a feature uses) is installed, else the
    message that says how to get ``feature``."""
    absent = missing(extra, modules)
    if not absent:
        return None
    return f"{feature} needs {' and '.join(absent)}: pip install 'annlayout[{extra}]'"


def dask_requirement(workers: int, scheduler: str | None) -> str | None:
    """What ``--workers N`` (dask's threads) or ``--scheduler`` (dask.distributed) needs, if
    it is missing; None for a serial run."""
    if scheduler:
        return requirement("dask", "--scheduler")
    if workers > 1:
        return requirement("dask", "--workers", modules=("dask",))
    return None
