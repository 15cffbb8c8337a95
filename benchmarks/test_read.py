"""Reads: annlayout's reader on shipped layouts against anndata's ``sparse_dataset``, one session.

The baseline is a CSR-only store written by ``adata.write_zarr`` with the installed anndata's
defaults, read through ``anndata.io.sparse_dataset``. The targets (issue: dual orientations
and a layout-aware reader), each a ratio of medians measured in the same run:

- 10 random genes over all cells with ``cell-browser``: at least 50x faster;
- 256 random rows with ``ml-minibatch``: at least 5x faster;
- the whole matrix with ``cell-browser``: no slower;
- on disk, ``cell-browser`` is at most 2.1x the same layout with one orientation.

Tests run in file order; the last one compares and asserts. Every access is checked equal to
the baseline's answer first, so a wrong read cannot win.
"""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

import annlayout
from tables import footprint

TARGETS = {  # access -> (annlayout store, minimum speed-up over the baseline)
    "10 random genes": ("cell-browser", 50.0),
    "256 random rows": ("ml-minibatch", 5.0),
    "whole matrix": ("cell-browser", 1.0),
}
MAX_SIZE_RATIO = 2.1


@pytest.fixture(scope="module")
def stores(dataset: Any, bench_dir: Path) -> dict[str, Path]:
    root = bench_dir / "read"
    root.mkdir(exist_ok=True)
    paths = {"baseline": root / "baseline.zarr"}
    dataset.write_zarr(paths["baseline"])
    single = root / "cell-browser-single.yaml"
    single.write_text(
        "annlayout: 1\nname: cell-browser-single\nextends: cell-browser\n"
        "rules: [{match: {path: X}, chunks: {major: 256}, shards: {bytes: 64MiB},"
        " orientations: [csr]}]\n"
    )
    for name in ("cell-browser", "ml-minibatch", single):
        label = Path(name).stem if isinstance(name, Path) else name
        paths[label] = root / f"{label}.zarr"
        annlayout.write(dataset, paths[label], name)
    return paths


@pytest.fixture(scope="module")
def selections(dataset: Any) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "10 random genes": (slice(None), np.sort(rng.choice(dataset.n_vars, 10, replace=False))),
        "256 random rows": (rng.choice(dataset.n_obs, 256, replace=False), slice(None)),
        "whole matrix": (slice(None), slice(None)),
    }


@pytest.fixture(scope="module")
def read_results() -> dict[str, dict[str, float]]:
    return {}


@functools.cache
def _baseline_matrix(path: Path) -> Any:
    """anndata's lazy matrix, opened once (as a handle is kept open by users)."""
    import anndata as ad
    import zarr

    return ad.io.sparse_dataset(zarr.open_group(path, mode="r")["X"])


def _baseline_read(path: Path, key: tuple) -> sp.csr_matrix:
    x = _baseline_matrix(path)
    rows, cols = key
    if isinstance(rows, np.ndarray):  # sparse_dataset reads rows fast only when sorted
        order = np.argsort(rows)
        return sp.csr_matrix(x[rows[order]])[np.argsort(order)]
    return sp.csr_matrix(x[rows, cols] if not isinstance(cols, slice) else x[rows])


READ_ROUNDS = 15  # a read takes milliseconds: a median of 3 would move with every hiccup


def _measure(benchmark, function, rounds: int) -> tuple[float, Any]:
    result = function()  # warm-up, and the answer to check
    benchmark.pedantic(function, rounds=max(rounds, READ_ROUNDS), iterations=1)
    return statistics.median(benchmark.stats.stats.data), result


@pytest.mark.parametrize("access", list(TARGETS))
def test_read_baseline(benchmark, stores, selections, read_results, bench_settings, access):
    key = selections[access]
    seconds, answer = _measure(
        benchmark, lambda: _baseline_read(stores["baseline"], key), bench_settings.rounds
    )
    read_results[access] = {"baseline": seconds, "answer": answer}


@pytest.mark.parametrize("access", list(TARGETS))
def test_read_annlayout(benchmark, stores, selections, read_results, bench_settings, access):
    layout, _ = TARGETS[access]
    rows, cols = selections[access]
    matrix = annlayout.open(stores[layout]).X  # a handle, opened once as users do

    def read() -> sp.csr_matrix:
        return matrix[rows, cols]

    seconds, answer = _measure(benchmark, read, bench_settings.rounds)
    expected = read_results[access]["answer"]
    assert answer.shape == expected.shape and (answer != expected).nnz == 0
    read_results[access]["annlayout"] = seconds


def test_read_ratios(benchmark, stores, read_results, bench_dir, terminal_report):
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    lines = [
        f"{'access':18} {'layout':14} {'anndata s':>10} {'annlayout s':>12} {'speed-up':>9} target"
    ]
    failures = []
    report: dict[str, Any] = {}
    for access, (layout, target) in TARGETS.items():
        base, ours = read_results[access]["baseline"], read_results[access]["annlayout"]
        speedup = base / ours
        ok = speedup >= target
        failures += [] if ok else [f"{access}: {speedup:.1f}x < {target:g}x"]
        lines.append(
            f"{access:18} {layout:14} {base:10.4f} {ours:12.4f} {speedup:8.1f}x >= {target:g}x"
            f" {'ok' if ok else 'MISSED'}"
        )
        report[access] = {"layout": layout, "baseline_s": base, "annlayout_s": ours,
                          "speedup": speedup, "target": target}  # fmt: skip
    dual, single = footprint(stores["cell-browser"])[1], footprint(stores["cell-browser-single"])[1]
    size_ratio = dual / single
    lines.append(
        f"size: cell-browser {dual / 1e6:.1f} MB, one orientation {single / 1e6:.1f} MB, "
        f"{size_ratio:.2f}x (<= {MAX_SIZE_RATIO}x)"
    )
    report["size_ratio"] = size_ratio
    if size_ratio > MAX_SIZE_RATIO:
        failures.append(f"size {size_ratio:.2f}x > {MAX_SIZE_RATIO}x")
    text = "\n".join(lines)
    print("\n" + text)
    terminal_report.append(text)
    (bench_dir / "read_ratios.json").write_text(json.dumps(report, indent=2))
    benchmark.extra_info.update({k: v for k, v in report.items() if k != "size_ratio"})
    assert not failures, "; ".join(failures)
