"""Fixtures for the benchmark suites: one realistic dataset per session (in memory, and written
once as an h5ad file for test_apply.py) and scratch output dirs.

Settings come from the environment (see README.md):

    ANNLAYOUT_BENCH_CELLS    cells (rows) of the dataset, default 50000
    ANNLAYOUT_BENCH_GENES    genes (columns) of the dataset, default 20000
    ANNLAYOUT_BENCH_ROUNDS   timed rounds per writer, default 3
    ANNLAYOUT_BENCH_WARMUP   untimed warm-up rounds per writer, default 1
    ANNLAYOUT_BENCH_GUIDE    1: also time the sharding recipe of anndata's zarr-v3 guide
    ANNLAYOUT_BENCH_GUIDE_ROUNDS  timed rounds of that recipe, default 1 (minutes each)

The defaults are the 50,000 x 20,000 dataset of the measured anchors in design.md (about 45M
nonzeros, ~13 s to build).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest

REPORT_KEY = pytest.StashKey[list[str]]()
SETTINGS_KEY = pytest.StashKey["BenchSettings"]()


def cache_dir() -> Path:
    """Where generated benchmark inputs are kept between runs: ``$ANNLAYOUT_BENCH_CACHE``,
    default ``<tmp>/annlayout-bench-cache``."""
    cache = os.environ.get("ANNLAYOUT_BENCH_CACHE", "").strip()
    return Path(cache) if cache else Path(tempfile.gettempdir()) / "annlayout-bench-cache"


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    """An integer setting from the environment, with a one-line error naming the variable."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise pytest.UsageError(f"{name}={text!r}: expected an integer") from None
    if value < minimum:
        raise pytest.UsageError(f"{name}={value}: expected at least {minimum}")
    return value


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class BenchSettings:
    cells: int
    genes: int
    rounds: int
    warmup_rounds: int
    guide: bool
    guide_rounds: int

    @classmethod
    def from_env(cls) -> BenchSettings:
        return cls(
            cells=env_int("ANNLAYOUT_BENCH_CELLS", 50_000, minimum=1),
            genes=env_int("ANNLAYOUT_BENCH_GENES", 20_000, minimum=1),
            rounds=env_int("ANNLAYOUT_BENCH_ROUNDS", 3, minimum=1),
            warmup_rounds=env_int("ANNLAYOUT_BENCH_WARMUP", 1, minimum=0),
            guide=env_flag("ANNLAYOUT_BENCH_GUIDE"),
            guide_rounds=env_int("ANNLAYOUT_BENCH_GUIDE_ROUNDS", 1, minimum=1),
        )


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "missing"


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SETTINGS_KEY] = BenchSettings.from_env()  # a bad setting stops the run here
    # the project runs with --strict-markers: markers used here must be registered
    config.addinivalue_line(
        "markers",
        "guide: the sharding recipe of anndata's zarr-v3 guide (minutes at full size; "
        "skipped unless ANNLAYOUT_BENCH_GUIDE=1)",
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    s = config.stash[SETTINGS_KEY]
    packages = ", ".join(
        f"{p} {_version(p)}"
        for p in ("anndata", "zarr", "zarrs", "numcodecs", "annbatch", "annizarr")
    )
    return [
        f"annlayout benchmarks: {s.cells:,} cells x {s.genes:,} genes, {s.rounds} rounds "
        f"(+{s.warmup_rounds} warm-up), guide recipe {'on' if s.guide else 'off'}",
        f"annlayout benchmarks: {packages}",
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.stash[SETTINGS_KEY].guide:
        return
    skip = pytest.mark.skip(
        reason="the zarr-v3 guide recipe runs only with ANNLAYOUT_BENCH_GUIDE=1"
    )
    for item in items:
        if item.get_closest_marker("guide") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _quiet_warnings():
    """anndata's deprecation and autosharding chatter is not what these benchmarks report."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*autoshard.*")
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        warnings.filterwarnings("ignore", message=".*zarr v2 data will no longer be the default.*")
        warnings.filterwarnings("ignore", message=".*future.infer_string.*")
        yield


@pytest.fixture(scope="session")
def bench_settings(pytestconfig: pytest.Config) -> BenchSettings:
    return pytestconfig.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def dataset(bench_settings: BenchSettings) -> Any:
    """The in-memory AnnData every write benchmark writes (CSR float32 X, obs, var, obsm)."""
    from annlayout.generate.synthetic import make_dataset

    adata = make_dataset(bench_settings.cells, bench_settings.genes, seed=0)
    # AnnData.write_zarr converts string columns to categoricals in place; do it once here so
    # every writer in the session writes exactly the same object, whichever runs first.
    adata.strings_to_categoricals()
    return adata


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Session scratch directory: stores are written (and removed) here, results saved here."""
    return tmp_path_factory.mktemp("annlayout-bench")


@pytest.fixture
def output_path(bench_dir: Path, request: pytest.FixtureRequest) -> Path:
    """A store path for one test, removed after it so outputs do not pile up on disk."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.name)
    path = bench_dir / f"{name}.zarr"
    shutil.rmtree(path, ignore_errors=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def h5ad_input(dataset: Any, bench_dir: Path) -> Path:
    """The dataset written once as an h5ad file with anndata's defaults (uncompressed): the
    input of every command in test_apply.py. Removed at the end of the session (~375 MB at the
    default size); the reports saved beside it stay."""
    path = bench_dir / "input.h5ad"
    with warnings.catch_warnings():  # session fixtures run before _quiet_warnings applies
        warnings.simplefilter("ignore")
        dataset.write_h5ad(path)
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def apply_results() -> dict[str, dict[str, Any]]:
    """Results shared by the tests of test_apply.py: command label -> medians of wall time and
    peak RSS and more. Filled by its measuring tests, read by its final comparison test."""
    return {}


@pytest.fixture(scope="session")
def write_results() -> dict[str, dict[str, Any]]:
    """Results shared by the tests of a session: writer label -> median seconds and more.

    Filled by the measuring tests in test_write.py, read by its final comparison test.
    """
    return {}


@pytest.fixture(scope="session")
def terminal_report(request: pytest.FixtureRequest) -> list[str]:
    """Text blocks (e.g. the ratio table) shown again in pytest's terminal summary."""
    return request.config.stash.setdefault(REPORT_KEY, [])


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    blocks = config.stash.get(REPORT_KEY, [])
    if not blocks or config.getoption("capture") == "no":  # with -s the tests printed them live
        return
    terminalreporter.section("annlayout benchmarks")
    for block in blocks:
        terminalreporter.write_line(block)
