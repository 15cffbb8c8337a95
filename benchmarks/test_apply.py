"""Rewriting an h5ad into zarr: ``annlayout apply`` against anndata's read + write, in one session.

Every command runs as its own process, started through ``measure_child.py``, which reports the
command's whole wall time (interpreter start and imports included, on every side alike) and its
peak RSS (see that file for why the numbers are per command and exact). The input is the
session's dataset written once as an h5ad file (fixture ``h5ad_input``). In file order:

1. ``test_apply_baseline``: ``anndata.read_h5ad(input)`` then ``adata.write_zarr(out)`` with the
   installed anndata's defaults;
2. ``test_apply_annlayout``: ``annlayout apply ml-minibatch INPUT OUT --memory 128MiB
   --no-verify``; ``test_apply_annlayout_verified``: the same with verification;
3. ``test_apply_floor``: the raw read of X plus its lz4 compression on all cores, nothing
   written (``FLOOR_SCRIPT``), for comparison, never asserted;
   ``test_apply_annbatch`` (``read_h5ad`` + ``annbatch.write_sharded``, zarrs pipeline) and
   ``test_apply_annizarr`` (``annizarr convert``): for comparison, never asserted; skipped where
   the package is not installed (both need Python >= 3.12);
4. ``test_apply_memory_bound``: X at least ``MIN_X_TO_BUDGET`` times ``--memory 64MiB`` (with
   16 MiB shards); asserts peak RSS <= budget + ``RSS_ALLOWANCE`` and that ``annlayout verify``
   finds the output equal to the input;
   ``test_transpose_memory_bound`` (a CSC copy of X built within ``--memory 80MiB``) and
   ``test_verify_orientation_change_memory_bound`` (``annlayout verify --memory 80MiB`` of a
   CSR input against its CSC rewrite) assert the same bound, one run each;
5. ``test_apply_targets``: median time and median peak RSS of annlayout (without verification)
   over the baseline's; prints a table, saves it under the session's tmp dir, and asserts the
   project targets: time ratio <= ``TARGET_TIME_RATIO``, RSS ratio <= ``TARGET_RSS_RATIO``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

import annlayout
from annlayout.planning.memory import parse_size
from tables import footprint, publish, text_table

TARGET_TIME_RATIO = 0.5  # annlayout apply --no-verify: at most half of read_h5ad + write_zarr
TARGET_RSS_RATIO = 0.5  # ... with at most half its peak RSS

LAYOUT = "ml-minibatch"
# ml-minibatch's 16 MiB shards: an int32 indices shard is read (16 MiB), kept int32 and
# encoded (~32 MiB): under 64 MiB per worker
MEMORY = "96MiB"
BOUND_MEMORY = "64MiB"
BOUND_SHARDS = "8MiB"  # an 8 MiB int32 shard of indices needs ~24 MiB
MIN_X_TO_BUDGET = 4  # the memory-bound check needs X (data + indices + indptr) >= 4x --memory
RSS_ALLOWANCE = 300 * 10**6  # peak RSS <= budget + 300 MB: interpreter, imports, small elements

BASELINE = "anndata read_h5ad + write_zarr"
ANNLAYOUT = f"annlayout apply {LAYOUT} --no-verify"
VERIFIED = f"annlayout apply {LAYOUT} (verified)"
ANNBATCH = "annbatch read_h5ad + write_sharded"
ANNIZARR = "annizarr convert"
FLOOR = "floor: raw read of X + lz4 on all cores"
BOUND = f"annlayout apply --memory {BOUND_MEMORY} (memory-bound)"
BOUND_VERIFY = "annlayout verify (after the memory-bound apply)"

LAUNCHER = Path(__file__).with_name("measure_child.py")
RESULTS = "apply_ratios"  # .json and .txt in the session's bench dir
MB = 10**6
PACKAGES = ("anndata", "zarr", "zarrs", "numcodecs", "h5py", "annbatch", "annizarr")

BASELINE_SCRIPT = """\
import sys
import anndata as ad

adata = ad.read_h5ad(sys.argv[1])
adata.write_zarr(sys.argv[2])
"""

# annbatch's README: zarrs "is necessary for local filesystem performance"; write_sharded's
# defaults otherwise (64 cells per chunk, 1 GB shards, blosc lz4).
ANNBATCH_SCRIPT = """\
import sys
import anndata as ad
import annbatch
import zarr

zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
adata = ad.read_h5ad(sys.argv[1])
annbatch.write_sharded(zarr.open_group(sys.argv[2], mode="w", zarr_format=3), adata)
"""

# The floor under any h5ad -> ml-minibatch rewrite, as a whole process like the others: X's
# data and indices read by their chunks' byte offsets (annlayout.storage.h5, which is os.preadv),
# indices kept int32 (the layout's minimal index dtype), both cut into 64-cell chunks and
# compressed with its blosc lz4 on every core. Nothing written, no obs/var, no anndata.
FLOOR_SCRIPT = """\
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import h5py
import numcodecs
import numpy as np

from annlayout.storage.h5 import h5_reader

with h5py.File(sys.argv[1], "r") as f:
    readers = [h5_reader(f["X/" + name]) for name in ("data", "indices")]
    n_obs = f["X/indptr"].shape[0] - 1
    data, indices = (reader.read([(0, reader.length)]) for reader in readers)
if indices.size and indices.max() < 2**31:
    indices = indices.astype(np.int32, copy=False)
per_chunk = max(1, round(64 * data.size / max(1, n_obs)))
codec = numcodecs.Blosc(cname="lz4", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)
pieces = [v[i : i + per_chunk] for v in (data, indices) for i in range(0, v.size, per_chunk)]
with ThreadPoolExecutor(os.cpu_count()) as pool:
    encoded = sum(len(b) for b in pool.map(codec.encode, pieces, chunksize=64))
print(encoded)
"""

BOUND_LAYOUT = f"""\
annlayout: 1
name: ml-minibatch-{BOUND_SHARDS.lower()}-shards
description: ml-minibatch with {BOUND_SHARDS} shards for X, so a {BOUND_MEMORY} budget holds one.
extends: {LAYOUT}
rules:
  - match: {{path: X}}
    chunks: {{major: 64}}
    shards: {{bytes: {BOUND_SHARDS}}}
"""


# --------------------------------------------------------------------------- measuring


def console_script(name: str) -> Path:
    """The console script installed next to this interpreter (the environment under test)."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        pytest.fail(
            f"{path}: not found; install the project into this environment (pip install -e .)"
        )
    return path


def run_measured(command: Sequence[str | Path], result_file: Path) -> dict[str, Any]:
    """Run ``command`` through the launcher; its measurements, stdout and stderr.

    Fails the test, with the end of the command's stderr, if the command exits non-zero.
    """
    command = [str(c) for c in command]
    done = subprocess.run(
        [sys.executable, str(LAUNCHER), str(result_file), "--", *command],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(f"measure_child.py could not run {shlex.join(command)}:\n{done.stderr}")
    run = json.loads(result_file.read_text())
    result_file.unlink()
    if run["returncode"] != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-20:])
        pytest.fail(f"exit {run['returncode']}: {shlex.join(command)}\n{tail}")
    run["stdout"], run["stderr"] = done.stdout, done.stderr
    return run


def measure(
    benchmark: Any, command: Sequence[str | Path], output: Path, settings: Any
) -> list[dict[str, Any]]:
    """Run ``command`` (which writes ``output``) for the warm-up and timed rounds; the previous
    output is removed, untimed, before each. Returns the timed rounds' measurements (every
    round's when benchmarks are disabled and pytest-benchmark runs it once)."""
    runs: list[dict[str, Any]] = []
    result_file = output.with_name(output.name + ".measure.json")

    def setup() -> None:
        shutil.rmtree(output, ignore_errors=True)

    def once() -> None:
        runs.append(run_measured(command, result_file))

    benchmark.pedantic(
        once,
        setup=setup,
        rounds=settings.rounds,
        warmup_rounds=settings.warmup_rounds,
        iterations=1,
    )
    return runs[-settings.rounds :] if benchmark.stats is not None else runs


def summarize(runs: list[dict[str, Any]], command: Sequence[str | Path], output: Path | None):
    seconds = [r["seconds"] for r in runs]
    peaks = [r["peak_rss"] for r in runs]
    info = {
        "command": shlex.join(str(c) for c in command),
        "rounds": len(runs),
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "median_peak_mb": statistics.median(peaks) / MB,
        "max_peak_mb": max(peaks) / MB,
        # ru_maxrss: the largest single process (differs from the peak with worker processes)
        "median_largest_process_mb": statistics.median(r["maxrss"] for r in runs) / MB,
        "median_cpu_s": statistics.median(r["cpu_seconds"] for r in runs),
        "processes": max(r["processes"] for r in runs),
        "seconds_per_round": [round(s, 3) for s in seconds],
        "peak_mb_per_round": [round(p / MB, 1) for p in peaks],
    }
    if output is not None:
        n_files, n_bytes = footprint(output)
        info.update(files=n_files, mbytes=round(n_bytes / MB, 1))
    return info


def record(
    benchmark: Any,
    results: dict[str, dict[str, Any]],
    label: str,
    runs: list[dict[str, Any]],
    command: Sequence[str | Path],
    output: Path | None,
    **extra: Any,
) -> dict[str, Any] | None:
    """Keep the medians for the comparison test and the JSON report (not when disabled)."""
    info = {**summarize(runs, command, output), **extra}
    benchmark.extra_info.update(info)
    if benchmark.stats is None:  # --benchmark-disable: one run, nothing to compare
        return None
    results[label] = info
    return info


def check_store(path: Path, shape: tuple[int, int], zarr_format: int | None = None) -> None:
    """The output is a zarr AnnData store whose X has the input's shape (metadata only)."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    if zarr_format is not None:
        assert root.metadata.zarr_format == zarr_format
    assert root.attrs.get("encoding-type") == "anndata"
    assert tuple(root["X"].attrs["shape"]) == shape


def x_nbytes(h5ad: Path) -> int:
    """Uncompressed bytes of the sparse X in an h5ad file: data + indices + indptr."""
    import h5py

    with h5py.File(h5ad, "r") as file:
        return sum(
            file["X"][part].size * file["X"][part].dtype.itemsize
            for part in ("data", "indices", "indptr")
        )


def apply_command(layout: str | Path, source: Path, output: Path, memory: str, *, verify: bool):
    command = [console_script("annlayout"), "apply", layout, source, output, "--memory", memory]
    if not verify:
        command.append("--no-verify")
    # --json: annlayout's own accounting (verify_seconds, peak_rss) on stdout; no progress bar
    return [*command, "--quiet", "--overwrite", "--json"]


def own_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of what ``annlayout apply --json`` reports about itself."""
    summaries = [json.loads(r["stdout"]) for r in runs]
    return {
        "median_own_seconds": statistics.median(s["seconds"] for s in summaries),
        "median_verify_seconds": statistics.median(s["verify_seconds"] for s in summaries),
        "median_own_peak_mb": statistics.median(s["peak_rss"] for s in summaries) / MB,
        "verified": all(s["verified"] for s in summaries),
    }


# --------------------------------------------------------------------------- the commands


@pytest.mark.benchmark(group="apply: h5ad -> zarr, one process per run")
def test_apply_baseline(benchmark, dataset, h5ad_input, output_path, bench_settings, apply_results):
    """``anndata.read_h5ad(input)`` then ``adata.write_zarr(out)`` with anndata's defaults."""
    command = [sys.executable, "-c", BASELINE_SCRIPT, h5ad_input, output_path]
    runs = measure(benchmark, command, output_path, bench_settings)
    check_store(output_path, dataset.shape)
    shown = ["python", "-c", "<read_h5ad + write_zarr>", h5ad_input.name, output_path.name]
    record(benchmark, apply_results, BASELINE, runs, shown, output_path, anndata=version("anndata"))


@pytest.mark.benchmark(group="apply: h5ad -> zarr, one process per run")
def test_apply_annlayout(
    benchmark, dataset, h5ad_input, output_path, bench_settings, apply_results
):
    """``annlayout apply ml-minibatch INPUT OUT --memory 128MiB --no-verify``."""
    command = apply_command(LAYOUT, h5ad_input, output_path, MEMORY, verify=False)
    runs = measure(benchmark, command, output_path, bench_settings)
    check_store(output_path, dataset.shape, zarr_format=3)
    record(benchmark, apply_results, ANNLAYOUT, runs, command, output_path, **own_summary(runs))


@pytest.mark.benchmark(group="apply: h5ad -> zarr, one process per run")
def test_apply_annlayout_verified(
    benchmark, dataset, h5ad_input, output_path, bench_settings, apply_results
):
    """The same with verification (the output is compared with the input before the rename)."""
    command = apply_command(LAYOUT, h5ad_input, output_path, MEMORY, verify=True)
    runs = measure(benchmark, command, output_path, bench_settings)
    check_store(output_path, dataset.shape, zarr_format=3)
    summary = own_summary(runs)
    assert summary["verified"]
    record(benchmark, apply_results, VERIFIED, runs, command, output_path, **summary)


@pytest.mark.benchmark(group="apply: h5ad -> zarr, one process per run")
def test_apply_floor(benchmark, dataset, h5ad_input, output_path, bench_settings, apply_results):
    """For comparison (never asserted): what no rewrite of this file can beat on this machine,
    the raw read of X plus its compression on all cores (``FLOOR_SCRIPT``)."""
    command = [sys.executable, "-c", FLOOR_SCRIPT, h5ad_input]
    runs = measure(benchmark, command, output_path, bench_settings)
    shown = ["python", "-c", "<raw read of X + blosc lz4, all cores>", h5ad_input.name]
    record(benchmark, apply_results, FLOOR, runs, shown, None)


def require(package: str) -> str:
    """The installed version of ``package``, or skip: these comparisons are optional."""
    if find_spec(package) is None:
        pytest.skip(
            f"{package} is not installed in this environment ({sys.executable}); "
            f"`pip install {package}` to compare with it (it needs Python >= 3.12)"
        )
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


@pytest.mark.benchmark(group="apply: h5ad -> zarr, one process per run")
def test_apply_annbatch(benchmark, dataset, h5ad_input, output_path, bench_settings, apply_results):
    """For comparison (never asserted): ``read_h5ad`` + ``annbatch.write_sharded`` (defaults,
    zarrs pipeline as annbatch recommends); the matrix is read whole, as in the baseline."""
    package_version = require("annbatch")
    command = [sys.executable, "-c", ANNBATCH_SCRIPT, h5ad_input, output_path]
    runs = measure(benchmark, command, output_path, bench_settings)
    check_store(output_path, dataset.shape, zarr_format=3)
    shown = ["python", "-c", "<read_h5ad + annbatch.write_sharded>", h5ad_input.name,
             output_path.name]  # fmt: skip
    record(benchmark, apply_results, ANNBATCH, runs, shown, output_path, annbatch=package_version)


@pytest.mark.benchmark(group="apply: h5ad -> zarr, one process per run")
def test_apply_annizarr(benchmark, dataset, h5ad_input, output_path, bench_settings, apply_results):
    """For comparison (never asserted): ``annizarr convert INPUT -o OUT`` with its defaults
    (streams the h5ad band by band in worker processes, one per core)."""
    package_version = require("annizarr")
    command = [sys.executable, "-m", "annizarr", "convert", h5ad_input, "-o", output_path,
               "--overwrite"]  # fmt: skip
    runs = measure(benchmark, command, output_path, bench_settings)
    check_store(output_path, dataset.shape)
    record(benchmark, apply_results, ANNIZARR, runs, command, output_path, annizarr=package_version)


@pytest.mark.benchmark(group="apply: memory-bound (64 MiB)")
def test_apply_memory_bound(
    benchmark, h5ad_input, output_path, bench_dir, bench_settings, apply_results
):
    """X is >= 4x --memory; peak RSS stays within the budget plus a fixed allowance, in every
    round, and ``annlayout verify`` finds the output equal to the input.

    On a dataset whose X is smaller than that, it runs and checks the same, then skips: the
    bound is not shown there."""
    budget = parse_size(BOUND_MEMORY)
    x_bytes = x_nbytes(h5ad_input)
    layout_file = bench_dir / "memory-bound.yaml"
    layout_file.write_text(BOUND_LAYOUT)
    limit = budget + RSS_ALLOWANCE
    command = apply_command(layout_file, h5ad_input, output_path, BOUND_MEMORY, verify=False)
    runs = measure(benchmark, command, output_path, bench_settings)

    verify_command = [console_script("annlayout"), "verify", h5ad_input, output_path]
    check = run_measured(verify_command, bench_dir / "verify.measure.json")  # fails unless 0
    peaks = [r["peak_rss"] for r in runs]
    info = record(
        benchmark, apply_results, BOUND, runs, command, output_path,
        x_mb=round(x_bytes / MB, 1), budget_mb=round(budget / MB, 1),
        x_to_budget=round(x_bytes / budget, 2), limit_mb=round(limit / MB, 1),
        **own_summary(runs),
    )  # fmt: skip
    if info is not None:
        apply_results[BOUND_VERIFY] = summarize([check], verify_command, None)
    assert max(peaks) <= limit, (
        f"peak RSS {max(peaks) / MB:,.0f} MB > --memory {BOUND_MEMORY} + "
        f"{RSS_ALLOWANCE / MB:,.0f} MB = {limit / MB:,.0f} MB (X is {x_bytes / MB:,.0f} MB); "
        f"per round: {', '.join(f'{p / MB:,.0f}' for p in peaks)} MB"
    )
    if x_bytes < MIN_X_TO_BUDGET * budget:  # small smoke-test sizes: ran, but proves nothing
        apply_results.pop(BOUND, None)
        apply_results.pop(BOUND_VERIFY, None)
        pytest.skip(
            f"ran and verified, but X is {x_bytes / 2**20:,.1f} MiB, less than "
            f"{MIN_X_TO_BUDGET}x --memory {BOUND_MEMORY}: this dataset cannot show the bound "
            "(use the default size or raise ANNLAYOUT_BENCH_CELLS)"
        )


# --------------------------------------------------------------------------- comparison


TRANSPOSE_MEMORY = "80MiB"
TRANSPOSE_LAYOUT = """\
annlayout: 1
name: transpose-bound
description: cell-browser with 4 MiB shards, so an 80 MiB budget holds the transpose's writes.
extends: cell-browser
rules:
  - match: {path: X}
    chunks: {major: 64}
    shards: {bytes: 4MiB}
    orientations: [csr, csc]
    copy: {chunks: {major: 16}, shards: {bytes: 4MiB}}
"""


def test_transpose_memory_bound(benchmark, h5ad_input, output_path, bench_dir, terminal_report):
    """The CSC copy is built out of core: nonzeros >= 4x --memory, peak RSS within the budget
    plus the allowance, and ``annlayout verify`` checks the copy value by value."""
    budget = parse_size(TRANSPOSE_MEMORY)
    x_bytes = x_nbytes(h5ad_input)
    layout_file = bench_dir / "transpose-bound.yaml"
    layout_file.write_text(TRANSPOSE_LAYOUT)
    command = apply_command(layout_file, h5ad_input, output_path, TRANSPOSE_MEMORY, verify=False)
    result = run_measured(command, bench_dir / "transpose.measure.json")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the timing is the child's
    verify = [console_script("annlayout"), "verify", h5ad_input, output_path]
    run_measured(verify, bench_dir / "transpose-verify.measure.json")  # fails unless exit 0
    limit = budget + RSS_ALLOWANCE
    line = (
        f"transpose: X {x_bytes / MB:,.0f} MB = {x_bytes / budget:.1f}x --memory "
        f"{TRANSPOSE_MEMORY}; apply with CSC copy {result['seconds']:.1f} s, peak RSS "
        f"{result['peak_rss'] / MB:,.0f} MB <= {limit / MB:,.0f} MB; copy verified"
    )
    print("\n" + line)
    terminal_report.append(line)
    assert result["peak_rss"] <= limit, line
    if x_bytes < MIN_X_TO_BUDGET * budget:
        pytest.skip(f"ran and verified, but X is less than {MIN_X_TO_BUDGET}x the budget")


ORIENTATION_MEMORY = "80MiB"
ORIENTATION_LAYOUT = """\
annlayout: 1
name: csc-primary
description: ml-minibatch with X turned to CSC in 4 MiB shards, so verify compares orientations.
extends: ml-minibatch
rules:
  - match: {path: X}
    chunks: {major: 16}
    shards: {bytes: 4MiB}
    orientations: [csc]
"""


def test_verify_orientation_change_memory_bound(
    benchmark, h5ad_input, output_path, bench_dir, terminal_report
):
    """X turned from CSR to CSC: ``annlayout verify --memory 80MiB`` compares the two
    orientations out of core (the input transposed in passes), so with X >= 4x the budget its
    peak RSS stays within the budget plus the allowance. The apply that made the output is
    measured too (same budget, unverified)."""
    budget = parse_size(ORIENTATION_MEMORY)
    x_bytes = x_nbytes(h5ad_input)
    layout_file = bench_dir / "csc-primary.yaml"
    layout_file.write_text(ORIENTATION_LAYOUT)
    command = apply_command(layout_file, h5ad_input, output_path, ORIENTATION_MEMORY, verify=False)
    applied = run_measured(command, bench_dir / "orientation.measure.json")
    verify = [console_script("annlayout"), "verify", h5ad_input, output_path,
              "--memory", ORIENTATION_MEMORY]  # fmt: skip
    checked = run_measured(verify, bench_dir / "orientation-verify.measure.json")  # exit 0
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the timings are the children's
    limit = budget + RSS_ALLOWANCE
    line = (
        f"orientation change: X {x_bytes / MB:,.0f} MB = {x_bytes / budget:.1f}x --memory "
        f"{ORIENTATION_MEMORY}; verify CSR input vs CSC output {checked['seconds']:.1f} s, peak "
        f"RSS {checked['peak_rss'] / MB:,.0f} MB <= {limit / MB:,.0f} MB (the apply: "
        f"{applied['seconds']:.1f} s, {applied['peak_rss'] / MB:,.0f} MB)"
    )
    print("\n" + line)
    terminal_report.append(line)
    benchmark.extra_info.update(
        x_mb=round(x_bytes / MB, 1), budget_mb=round(budget / MB, 1),
        verify_seconds=checked["seconds"], verify_peak_mb=round(checked["peak_rss"] / MB, 1),
        apply_seconds=applied["seconds"], apply_peak_mb=round(applied["peak_rss"] / MB, 1),
    )  # fmt: skip
    assert checked["peak_rss"] <= limit, line
    assert applied["peak_rss"] <= limit, line
    if x_bytes < MIN_X_TO_BUDGET * budget:
        pytest.skip(f"ran and verified, but X is less than {MIN_X_TO_BUDGET}x the budget")


def render_table(rows: list[dict[str, Any]], baseline: Mapping[str, Any]) -> str:
    header = ("command", "median s", "min s", "max s", "time ratio", "peak MB", "max MB",
              "RSS ratio", "CPU s", "procs", "files", "MB out", "target")  # fmt: skip
    lines = [header]
    for row in rows:
        lines.append(
            (
                row["label"],
                f"{row['median_s']:.2f}",
                f"{row['min_s']:.2f}",
                f"{row['max_s']:.2f}",
                f"{row['median_s'] / baseline['median_s']:.2f}",
                f"{row['median_peak_mb']:,.0f}",
                f"{row['max_peak_mb']:,.0f}",
                f"{row['median_peak_mb'] / baseline['median_peak_mb']:.2f}",
                f"{row['median_cpu_s']:.1f}",
                str(row["processes"]),
                str(row.get("files", "")),
                f"{row['mbytes']:.1f}" if "mbytes" in row else "",
                row.get("verdict", ""),
            )
        )
    out = text_table(lines)
    for row in rows:
        if row["processes"] > 1 and row["median_largest_process_mb"] < row["median_peak_mb"]:
            out.append(
                f"{row['label']}: {row['processes']} processes; peak MB is their summed PSS, the "
                f"largest single process peaked at {row['median_largest_process_mb']:,.0f} MB"
            )
    out.append(
        f"ratios = median(command) / median({BASELINE}) = median / {baseline['median_s']:.2f} s "
        f"and / {baseline['median_peak_mb']:,.0f} MB; wall time and peak RSS of the whole process "
        "(imports included); CPU s = user + system"
    )
    return "\n".join(out)


def environment(settings: Any) -> dict[str, Any]:
    def maybe(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        **{package: maybe(package) for package in PACKAGES},
        "annlayout": annlayout.__version__,
        "cpus": os.cpu_count(),
        "shape": [settings.cells, settings.genes],
        "rounds": settings.rounds,
        "warmup_rounds": settings.warmup_rounds,
        "memory": MEMORY,
    }


@pytest.mark.benchmark(group="apply: ratio check (not a timing)")
def test_apply_targets(benchmark, apply_results, bench_dir, bench_settings, terminal_report):
    """annlayout apply (--no-verify) takes at most TARGET_TIME_RATIO x the baseline's median
    wall time and at most TARGET_RSS_RATIO x its median peak RSS, both measured in this session.

    Reads the medians the tests above recorded (same module, defined above, so they run first).
    It takes the ``benchmark`` fixture so that ``--benchmark-only`` runs it; the only thing it
    times is saving the report.
    """
    baseline, ours = apply_results.get(BASELINE), apply_results.get(ANNLAYOUT)
    if baseline is None or ours is None:
        pytest.skip("the baseline or annlayout apply was not measured in this session")
    time_ratio = ours["median_s"] / baseline["median_s"]
    rss_ratio = ours["median_peak_mb"] / baseline["median_peak_mb"]
    time_ok, rss_ok = time_ratio <= TARGET_TIME_RATIO, rss_ratio <= TARGET_RSS_RATIO
    verdict = ", ".join(
        [
            f"time {'ok' if time_ok else 'TOO SLOW'} (<= {TARGET_TIME_RATIO})",
            f"RSS {'ok' if rss_ok else 'TOO BIG'} (<= {TARGET_RSS_RATIO})",
        ]
    )
    rows = [{"label": BASELINE, **baseline}, {"label": ANNLAYOUT, "verdict": verdict, **ours}]
    for label in (VERIFIED, FLOOR, ANNBATCH, ANNIZARR):
        if label in apply_results:
            rows.append({"label": label, "verdict": "not asserted", **apply_results[label]})
    bound = apply_results.get(BOUND)
    if bound is not None:
        ok = bound["max_peak_mb"] <= bound["limit_mb"]
        rows.append({"label": BOUND, **bound, "verdict": f"peak {'ok' if ok else 'TOO BIG'} "
                     f"(<= {bound['limit_mb']:,.0f} MB)"})  # fmt: skip
        rows.append({"label": BOUND_VERIFY, "verdict": "exit 0", **apply_results[BOUND_VERIFY]})
    table = render_table(rows, baseline)

    verification = None
    if VERIFIED in apply_results:
        verified = apply_results[VERIFIED]
        verification = {
            "extra_s": verified["median_s"] - ours["median_s"],
            "ratio": verified["median_s"] / ours["median_s"],
            "verify_seconds_reported": verified["median_verify_seconds"],
            "extra_peak_mb": verified["median_peak_mb"] - ours["median_peak_mb"],
        }
        table += (
            f"\nverification: +{verification['extra_s']:.2f} s ({verification['ratio']:.2f}x "
            f"the unverified apply; annlayout reports {verification['verify_seconds_reported']:.2f}"
            f" s verifying), peak RSS {verification['extra_peak_mb']:+,.0f} MB"
        )
    floor = apply_results.get(FLOOR)
    if floor is not None:
        table += (
            f"\nfloor: annlayout apply (--no-verify) takes {ours['median_s'] / floor['median_s']:.2f}"
            f"x the raw read and compression of X ({floor['median_s']:.2f} s)"
        )
    if bound is not None:
        table += (
            f"\nmemory-bound: X {bound['x_mb']:,.0f} MB = {bound['x_to_budget']:.1f}x --memory "
            f"{BOUND_MEMORY}; peak RSS {bound['max_peak_mb']:,.0f} MB (max of {bound['rounds']} "
            f"rounds) <= {bound['limit_mb']:,.0f} MB"
        )
    skipped = [label for label in (ANNBATCH, ANNIZARR) if label not in apply_results]
    if skipped:
        table += f"\nnot measured in this session: {', '.join(skipped)}"

    report = {
        "targets": {"time_ratio": TARGET_TIME_RATIO, "rss_ratio": TARGET_RSS_RATIO},
        "environment": environment(bench_settings),
        "ratios": {"time": time_ratio, "rss": rss_ratio},
        "verification": verification,
        "floor_ratio": None if floor is None else ours["median_s"] / floor["median_s"],
        "results": apply_results,
        "not_measured": skipped,
    }
    benchmark.extra_info.update(time_ratio=time_ratio, rss_ratio=rss_ratio)
    publish(benchmark, bench_dir, RESULTS, report, table, terminal_report)

    problems = []
    if not time_ok:
        problems.append(f"time ratio {time_ratio:.2f} > {TARGET_TIME_RATIO}")
    if not rss_ok:
        problems.append(f"peak RSS ratio {rss_ratio:.2f} > {TARGET_RSS_RATIO}")
    assert not problems, f"annlayout apply against {BASELINE}: " + "; ".join(problems)
