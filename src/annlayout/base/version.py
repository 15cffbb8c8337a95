"""annlayout's version, as ``annlayout.__version__`` and the provenance of written stores give
it: the installed distribution's, or ``0.0.0+unknown`` in a source tree not installed."""

from __future__ import annotations

from functools import cache


@cache
def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("annlayout")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0.0.0+unknown"
