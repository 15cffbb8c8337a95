"""Appending to a store at scale (issue 13): ``annlayout append`` of 10% more cells to a
1M-cell ml-minibatch store, against rewriting the store (``annlayout concat`` of every input,
the old ones and the new one), whole processes, in one session.

Off unless ``ANNLAYOUT_BENCH_CONCAT=1`` (it shares the collection of
``test_concat_scale.py``)::

    ANNLAYOUT_BENCH_CONCAT=1 pytest benchmarks/test_append_scale.py -p no:cacheprovider \\
        --benchmark-only -s

The store is ``annlayout concat ml-minibatch <10 files> --join outer`` (every gene), built
once into the cache. The new cells are one more generated file with 10% of the collection's
cells (``annlayout generate --files 1 --seed 1``: its own 90% of the same gene universe).
Each timed append starts from a fresh copy of the store (copied untimed). Measured, in file
order:

1. ``test_append_annlayout``: ``annlayout append STORE NEW --join outer --memory 1GiB``
   (verified, as by default);
2. ``test_append_rewrite``: ``annlayout concat ml-minibatch <10 files> NEW OUT --join outer
   --memory 1GiB``: the same result written from scratch (verified);
3. ``test_append_targets``: the table (``append_scale.txt``/``.json``) and the target:
   append wall <= ``TARGET_APPEND_TIME`` x the rewrite's.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import env_flag
from tables import publish, text_table
from test_apply import console_script, measure, record
from test_concat_scale import (
    LAYOUT,
    MEMORY,
    SEED,
    ScaleSettings,
    build_collection,
    store_shape,
)

pytestmark = pytest.mark.skipif(
    not env_flag("ANNLAYOUT_BENCH_CONCAT"),
    reason="collection-scale append (~3 min) runs only with ANNLAYOUT_BENCH_CONCAT=1",
)

TARGET_APPEND_TIME = 0.25  # append 10% more cells: at most a quarter of rewriting the store
APPEND = "annlayout append (10% more cells)"
REWRITE = f"annlayout concat {LAYOUT} (rewrite, all inputs)"
GROUP = "append: 10% more cells to a 1M-cell store, one process per run"
RESULTS = "append_scale"


@pytest.fixture(scope="module")
def scale_settings() -> ScaleSettings:
    return ScaleSettings.from_env()


@pytest.fixture(scope="module")
def collection(scale_settings: ScaleSettings) -> list[Path]:
    return build_collection(scale_settings)


@pytest.fixture(scope="module")
def base_store(collection, scale_settings) -> Path:
    """The 1M-cell store, every gene, built once into the cache (~45 s)."""
    path = scale_settings.cache / f"{scale_settings.name}-{LAYOUT}-outer.zarr"
    if not path.is_dir():
        command = [console_script("annlayout"), "concat", LAYOUT, *collection, path, "--join",
                   "outer", "--memory", MEMORY, "--quiet"]  # fmt: skip
        subprocess.run([str(c) for c in command], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def new_cells(scale_settings) -> Path:
    """One more file, 10% of the collection's cells, its own 90% of the same genes."""
    s = scale_settings
    directory = s.cache / f"{s.name}-extra-10pct"
    if not directory.is_dir():
        command = [console_script("annlayout"), "generate", directory, "--files", 1,
                   "--cells", s.cells // 10, "--genes", s.genes, "--nnz-per-cell",
                   s.nnz_per_cell, "--seed", SEED + 1]  # fmt: skip
        subprocess.run([str(c) for c in command], check=True, capture_output=True)
    return directory / "part-000.h5ad"


@pytest.fixture(scope="module")
def append_results() -> dict[str, dict[str, Any]]:
    return {}


@pytest.mark.benchmark(group=GROUP)
def test_append_annlayout(
    benchmark, base_store, new_cells, tmp_path, scale_settings, append_results
):
    store = tmp_path / "store.zarr"
    command = [console_script("annlayout"), "append", store, new_cells, "--join", "outer",
               "--memory", MEMORY, "--quiet"]  # fmt: skip

    def fresh_copy() -> None:  # untimed: each append starts from the 1M-cell store
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(base_store, store)

    runs = measure_from(benchmark, command, store, scale_settings, fresh_copy)
    shape = store_shape(store)
    record(benchmark, append_results, APPEND, runs,
           ["annlayout", "append", "<1M-cell store>", new_cells.name, *map(str, command[-5:])],
           store, **shape)  # fmt: skip
    before = store_shape(base_store)
    assert shape["out_cells"] == before["out_cells"] + scale_settings.cells // 10


@pytest.mark.benchmark(group=GROUP)
def test_append_rewrite(
    benchmark, collection, new_cells, output_path, scale_settings, append_results
):
    command = [console_script("annlayout"), "concat", LAYOUT, *collection, new_cells,
               output_path, "--join", "outer", "--memory", MEMORY, "--quiet"]  # fmt: skip
    runs = measure(benchmark, command, output_path, scale_settings)
    record(benchmark, append_results, REWRITE, runs,
           ["annlayout", "concat", LAYOUT, f"<{len(collection) + 1} inputs>",
            *map(str, command[-6:])], output_path, **store_shape(output_path))  # fmt: skip


def measure_from(benchmark, command, output: Path, settings, setup) -> list[dict[str, Any]]:
    """:func:`test_apply.measure` with another untimed setup (a fresh copy of the store)."""
    from test_apply import run_measured

    runs: list[dict[str, Any]] = []
    result_file = output.with_name(output.name + ".measure.json")
    benchmark.pedantic(
        lambda: runs.append(run_measured(command, result_file)),
        setup=setup, rounds=settings.rounds, warmup_rounds=settings.warmup_rounds, iterations=1,
    )  # fmt: skip
    return runs[-settings.rounds :] if benchmark.stats is not None else runs


@pytest.mark.benchmark(group="append: ratio check (not a timing)")
def test_append_targets(benchmark, append_results, bench_dir, terminal_report):
    if APPEND not in append_results or REWRITE not in append_results:
        pytest.skip("append and the rewrite were not both measured in this session")
    rows = [{"label": label, **append_results[label]} for label in (APPEND, REWRITE)]
    header = ("command", "median s", "peak MB", "CPU s", "out shape", "out nnz")
    table = [header]
    for r in rows:
        table.append((r["label"], f"{r['median_s']:.1f}", f"{r['median_peak_mb']:,.0f}",
                      f"{r['median_cpu_s']:.1f}", f"{r['out_cells']:,} x {r['out_genes']:,}",
                      f"{r['out_nnz']:,}"))  # fmt: skip
    lines = text_table(table)
    value = append_results[APPEND]["median_s"] / append_results[REWRITE]["median_s"]
    verdict = "ok" if value <= TARGET_APPEND_TIME else "MISSED"
    lines.append(
        f"append wall / rewrite wall: {value:.2f} (target <= {TARGET_APPEND_TIME}) {verdict}"
    )
    report = {"rows": rows, "ratio": value, "target": TARGET_APPEND_TIME}
    publish(benchmark, bench_dir, RESULTS, report, "\n".join(lines), terminal_report)
    assert value <= TARGET_APPEND_TIME, lines[-1]
