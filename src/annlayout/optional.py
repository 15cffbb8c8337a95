"""Features that need packages beyond the core install, and the one-line error when missing.

dask (threads and clusters for ``apply``, anndata's ``read_lazy`` in ``bench``), xarray
(``read_lazy``'s dataframes) and fsspec/s3fs (``s3://`` URLs) are extras, so a plain install
stays small; asking for the feature without them says which extra to install.
"""

from __future__ import annotations

from importlib.util import find_spec

EXTRAS = {
    "dask": ("dask", "distributed"),
    "s3": ("fsspec", "s3fs"),
    "bench": ("dask", "xarray"),
}


def missing(extra: str) -> list[str]:
    """The packages of ``extra`` that are not installed."""
    return [name for name in EXTRAS[extra] if find_spec(name) is None]


def requirement(extra: str, feature: str) -> str | None:
    """None when ``extra`` is installed, else the message that says how to get ``feature``."""
    absent = missing(extra)
    if not absent:
        return None
    return f"{feature} needs {' and '.join(absent)}: pip install 'annlayout[{extra}]'"
