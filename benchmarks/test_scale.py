"""Ten million cells on one machine (issue 29 "Scale"): ``annlayout concat`` at 2 GiB against
a 1M-cell run and against annbatch, and the same run on a dask LocalCluster of processes
with its scratch on a loopback S3 server, in one session.

Off unless ``ANNLAYOUT_BENCH_SCALE=1``. At the default size (10,000,000 cells x 20,000 genes in
20 h5ad files, ~225 nonzeros per cell, ~18 GB of input) it needs a quiet machine: hours of
work, ~60 GB of disk at the peak and annbatch's memory (its size is chosen from what it used
at 1M cells). Run it with the Python 3.12 stack (annbatch needs it)::

    ANNLAYOUT_BENCH_SCALE=1 pytest benchmarks/test_scale.py -p no:cacheprovider \\
        --benchmark-only -s

The collection is ``annlayout generate DIR --files 20`` (cached like test_concat_scale.py's).
Its first files make the smaller collections: the 1M-cell baseline is the first
``20 x 1M / N`` files (at least 2), and annbatch's larger sizes are longer runs of files, so
one collection on disk serves every size. Every command runs as its own process through
``measure_child.py``: wall time from spawn to exit, imports included, and peak RSS. In order:

1. ``test_scale_shuffled[base|full]``: ``annlayout concat ml-minibatch INPUTS OUT --shuffle 0
   --memory 2GiB --json``: seconds per million cells, peak RSS, the shuffle's mixing (mean
   entropy of the inputs' labels in windows of 256 cells, against a uniform permutation's);
2. ``test_scale_outer[base|full]``: the same with ``--join outer`` (every gene, as annbatch);
3. ``test_scale_annbatch[base]``: ``annbatch.DatasetCollection(OUT).add_adatas(INPUTS,
   shuffle=True)`` (test_concat_scale.py's script) on the baseline; then
   ``test_scale_annbatch_largest``: on the longest run of files whose RSS, predicted linearly
   from the baseline's peak per million cells, fits in 80% of the memory available now
   (skipped, saying why, when no run longer than the baseline fits);
4. ``test_scale_cluster``: the full shuffled run with ``--scheduler`` on a fresh
   ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` and ``--scratch`` on a
   moto server on the loopback (its objects spill to this machine's temporary directory): wall
   time against the local-disk run, the driver's peak RSS and each worker's;
5. ``test_scale_report``: the table (``scale.txt``/``.json`` in the session's bench dir) and
   the issue's targets, reported, not asserted: full seconds per million cells within 1.2x the
   baseline's, peak RSS within ``--memory`` + 300 MB, ``--join outer`` at most 0.5x annbatch's
   time at each size both ran.

Sizes: each run's input (the h5ad files), output and peak scratch (sampled every
``SAMPLE_SECONDS`` while it runs: the combined inputs and the shuffle's files beside the output,
or under the S3 prefix). A run whose input, twice its input for the scratch and its input again
for the output would not fit the free disk is skipped, saying so.

Settings (environment): ``ANNLAYOUT_BENCH_SCALE_CELLS`` (10000000), ``_BASE`` (1000000, the
baseline's cells), ``_FILES`` (20), ``_GENES`` (20000), ``_NNZ`` (225, mean nonzeros per cell
asked of the generator; the report gives the 5th-95th percentile found), ``_MEMORY`` (2GiB), and
``ANNLAYOUT_BENCH_CACHE`` (the collection's parent directory).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from annlayout.planning.memory import parse_size
from annlayout.storage.stores import footprint
from conftest import cache_dir, env_flag, env_int
from tables import publish, text_table
from test_apply import MB, console_script, environment, run_measured
from test_concat_scale import ANNBATCH_SCRIPT, store_shape

pytestmark = pytest.mark.skipif(
    not env_flag("ANNLAYOUT_BENCH_SCALE"),
    reason="ten-million-cell concat (hours, ~60 GB of disk) runs only with ANNLAYOUT_BENCH_SCALE=1",
)

LAYOUT = "ml-minibatch"
SEED = 0
RSS_ALLOWANCE = 300 * MB  # interpreter, imports, obs/var beside --memory
TARGET_LINEAR = 1.2  # seconds per million cells at the full size / at the baseline
TARGET_ANNBATCH_TIME = 0.5  # --join outer --shuffle / annbatch add_adatas(shuffle=True)
MEMORY_SHARE = 0.8  # of the memory available: the most annbatch is predicted to be given
SAMPLE_SECONDS = 2.0
BUCKET = "annlayout-bench"
GROUP = "scale: concat of a generated collection, one process per run"


@dataclass(frozen=True)
class Scale:
    cells: int
    base: int
    files: int
    genes: int
    nnz_per_cell: int
    memory: str
    cache: Path

    @classmethod
    def from_env(cls) -> Scale:
        return cls(
            cells=env_int("ANNLAYOUT_BENCH_SCALE_CELLS", 10_000_000, minimum=4),
            base=env_int("ANNLAYOUT_BENCH_SCALE_BASE", 1_000_000, minimum=2),
            files=env_int("ANNLAYOUT_BENCH_SCALE_FILES", 20, minimum=2),
            genes=env_int("ANNLAYOUT_BENCH_SCALE_GENES", 20_000, minimum=1),
            nnz_per_cell=env_int("ANNLAYOUT_BENCH_SCALE_NNZ", 225, minimum=1),
            memory=os.environ.get("ANNLAYOUT_BENCH_SCALE_MEMORY", "").strip() or "2GiB",
            cache=cache_dir(),
        )

    @property
    def directory(self) -> Path:
        return self.cache / (
            f"scale-{self.cells}x{self.genes}-{self.files}f-{self.nnz_per_cell}nnz-s{SEED}"
        )

    @property
    def base_files(self) -> int:
        return min(self.files, max(2, round(self.files * self.base / self.cells)))

    # for the table and the JSON report (test_apply.environment reads these)
    rounds = 1
    warmup_rounds = 0


@dataclass
class Collection:
    paths: list[Path]
    cells: list[int]  # per file
    nnz: list[int]  # per file
    nnz_percentiles: tuple[float, float, float]  # 5th, 50th, 95th of nonzeros per cell

    def prefix(self, files: int) -> tuple[list[Path], int, int]:
        """The first ``files`` files, their cells and their stored bytes."""
        paths = self.paths[:files]
        return paths, sum(self.cells[:files]), sum(p.stat().st_size for p in paths)


@pytest.fixture(scope="module")
def scale() -> Scale:
    return Scale.from_env()


@pytest.fixture(scope="module")
def collection(scale: Scale) -> Collection:
    """The generated collection (cached between sessions; ``generate`` writes it whole)."""
    import subprocess

    import h5py
    import numpy as np

    if not scale.directory.is_dir():
        scale.cache.mkdir(parents=True, exist_ok=True)
        need = scale.cells * scale.nnz_per_cell * 8 * 1.1
        free = shutil.disk_usage(scale.cache).free
        if need > free:
            pytest.skip(f"{scale.directory}: the collection needs ~{need / MB:,.0f} MB, "
                        f"{free / MB:,.0f} MB free")  # fmt: skip
        command = [console_script("annlayout"), "generate", scale.directory, "--files",
                   scale.files, "--cells", scale.cells, "--genes", scale.genes,
                   "--nnz-per-cell", scale.nnz_per_cell, "--seed", SEED, "--quiet"]  # fmt: skip
        subprocess.run([str(c) for c in command], check=True, capture_output=True)
    paths = sorted(scale.directory.glob("part-*.h5ad"))
    if len(paths) != scale.files:
        pytest.fail(f"{scale.directory}: {len(paths)} part files, expected {scale.files}")
    cells, nnz, samples = [], [], []
    for path in paths:
        with h5py.File(path, "r") as file:
            indptr = file["X"]["indptr"][:]
        per_cell = np.diff(indptr)
        cells.append(per_cell.size)
        nnz.append(int(indptr[-1]))
        samples.append(per_cell[:: max(1, per_cell.size // 10_000)])
    found = np.percentile(np.concatenate(samples), [5, 50, 95])
    return Collection(paths, cells, nnz, tuple(float(x) for x in found))


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    return {}


@contextmanager
def peak_size(location: str | Path):
    """The largest footprint ``location`` reaches while the block runs (sampled)."""
    peak = {"bytes": 0, "objects": 0}
    stop = threading.Event()

    def sample() -> None:
        while True:
            try:
                size, objects = footprint(location)
            except (FileNotFoundError, OSError):
                size, objects = 0, 0
            if size > peak["bytes"]:
                peak.update(bytes=size, objects=objects)
            if stop.wait(SAMPLE_SECONDS):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()


def check_disk(where: Path, input_bytes: int, label: str) -> None:
    """Input again for the output and twice for the scratch (combined inputs, buckets)."""
    need, free = 3 * input_bytes, shutil.disk_usage(where).free
    if need > free:
        pytest.skip(f"{label}: needs ~{need / MB:,.0f} MB of disk for output and scratch, "
                    f"{free / MB:,.0f} MB free")  # fmt: skip


def measured(
    benchmark: Any,
    command: list[Any],
    output: Path,
    scratch: str | Path,
    cells: int,
    input_bytes: int,
) -> dict[str, Any]:
    """One measured run of ``command`` (writing ``output``), its figures; output removed."""
    shutil.rmtree(output, ignore_errors=True)
    result_file = output.with_name(output.name + ".measure.json")
    runs: list[dict[str, Any]] = []
    with peak_size(scratch) as scratch_peak:
        benchmark.pedantic(lambda: runs.append(run_measured(command, result_file)), rounds=1,
                           iterations=1)  # fmt: skip
    run = runs[-1]
    out_bytes, out_objects = footprint(output)
    info = {
        "command": " ".join(str(c) for c in command[:3])
        + f" <{cells:,} cells> "
        + " ".join(str(c) for c in command if str(c).startswith("--")),
        "cells": cells,
        "seconds": run["seconds"],
        "seconds_per_million": run["seconds"] / (cells / 1e6),
        "peak_mb": run["peak_rss"] / MB,
        "peak_mb_per_million": run["peak_rss"] / MB / (cells / 1e6),
        "cpu_s": run["cpu_seconds"],
        "input_mb": input_bytes / MB,
        "output_mb": out_bytes / MB,
        "output_objects": out_objects,
        "scratch_peak_mb": scratch_peak["bytes"] / MB,
        **store_shape(output),
    }
    text = run["stdout"].strip()
    if text.startswith("{"):
        mixing = json.loads(text).get("mixing")
        if mixing:
            info["mixing_bits"], info["mixing_uniform"] = mixing["bits"], mixing["uniform"]
    shutil.rmtree(output, ignore_errors=True)
    benchmark.extra_info.update(info)
    return info


def concat_command(inputs: list[Path], output: Path, memory: str, *extra: Any) -> list[Any]:
    return [console_script("annlayout"), "concat", LAYOUT, *inputs, output, "--shuffle", SEED,
            "--memory", memory, "--json", *extra]  # fmt: skip


def local_scratch(output: Path) -> Path:
    return output.with_name(f".{output.name}.annlayout-concat")


SIZES = ["base", "full"]


def files_for(size: str, scale: Scale) -> int:
    return scale.base_files if size == "base" else scale.files


# --------------------------------------------------------------------------- the runs


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.benchmark(group=GROUP)
def test_scale_shuffled(benchmark, collection, scale, output_path, results, size):
    """``annlayout concat ml-minibatch INPUTS OUT --shuffle 0 --memory 2GiB``."""
    inputs, cells, nbytes = collection.prefix(files_for(size, scale))
    check_disk(output_path.parent, nbytes, f"shuffled {size}")
    command = concat_command(inputs, output_path, scale.memory)
    results[f"shuffled {size}"] = info = measured(
        benchmark, command, output_path, local_scratch(output_path), cells, nbytes
    )
    assert info["out_cells"] == cells


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.benchmark(group=GROUP)
def test_scale_outer(benchmark, collection, scale, output_path, results, size):
    """The same with ``--join outer``: every gene, as annbatch writes."""
    inputs, cells, nbytes = collection.prefix(files_for(size, scale))
    check_disk(output_path.parent, nbytes, f"outer {size}")
    command = concat_command(inputs, output_path, scale.memory, "--join", "outer")
    results[f"outer {size}"] = info = measured(
        benchmark, command, output_path, local_scratch(output_path), cells, nbytes
    )
    assert info["out_cells"] == cells  # the genes: any file's (the first files may lack some)


def annbatch_run(benchmark, inputs, output_path, cells, nbytes) -> dict[str, Any]:
    import sys

    from test_apply import require

    package_version = require("annbatch")
    command = [sys.executable, "-c", ANNBATCH_SCRIPT, output_path, *inputs]
    info = measured(benchmark, command, output_path, output_path, cells, nbytes)
    info["command"] = f"annbatch {package_version} add_adatas(shuffle=True) <{cells:,} cells>"
    info.pop("scratch_peak_mb")  # sampled the output itself: annbatch keeps no scratch
    return info


@pytest.mark.benchmark(group=GROUP)
def test_scale_annbatch_base(benchmark, collection, scale, output_path, results):
    inputs, cells, nbytes = collection.prefix(scale.base_files)
    check_disk(output_path.parent, nbytes, "annbatch base")
    results["annbatch base"] = annbatch_run(benchmark, inputs, output_path, cells, nbytes)


def available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


@pytest.mark.benchmark(group=GROUP)
def test_scale_annbatch_largest(benchmark, collection, scale, output_path, results):
    """annbatch on the longest run of files its predicted peak RSS fits."""
    if "annbatch base" not in results:
        pytest.skip("annbatch was not measured at the baseline: nothing to predict from")
    per_cell = results["annbatch base"]["peak_mb"] * MB / results["annbatch base"]["cells"]
    limit = MEMORY_SHARE * available_memory()
    fitting = [k for k in range(scale.base_files + 1, scale.files + 1)
               if per_cell * collection.prefix(k)[1] <= limit]  # fmt: skip
    full_cells = sum(collection.cells)
    results["annbatch prediction"] = {
        "peak_mb_per_million": per_cell * 1e6 / MB,
        "full_predicted_mb": per_cell * full_cells / MB,
        "limit_mb": limit / MB,
    }
    if not fitting:
        pytest.skip(
            f"annbatch at {scale.base_files + 1} files and more: predicted peak RSS "
            f"{per_cell * collection.prefix(scale.base_files + 1)[1] / MB:,.0f} MB and up "
            f"(the full {full_cells:,} cells: {per_cell * full_cells / MB:,.0f} MB), beyond "
            f"{MEMORY_SHARE:.0%} of the {available_memory() / MB:,.0f} MB available"
        )
    inputs, cells, nbytes = collection.prefix(fitting[-1])
    check_disk(output_path.parent, nbytes, "annbatch largest")
    results["annbatch largest"] = annbatch_run(benchmark, inputs, output_path, cells, nbytes)
    results["annbatch largest"]["predicted_peak_mb"] = per_cell * cells / MB


@pytest.mark.benchmark(group=GROUP)
def test_scale_outer_at_annbatch_largest(benchmark, collection, scale, output_path, results):
    """``--join outer --shuffle`` at annbatch's largest size (when that is not a size
    measured already)."""
    if "annbatch largest" not in results:
        pytest.skip("annbatch ran at the baseline only")
    cells = results["annbatch largest"]["cells"]
    if cells == sum(collection.cells):
        pytest.skip("annbatch's largest size is the full collection, measured already")
    files = next(k for k in range(1, scale.files + 1) if collection.prefix(k)[1] == cells)
    inputs, cells, nbytes = collection.prefix(files)
    command = concat_command(inputs, output_path, scale.memory, "--join", "outer")
    results["outer annbatch largest"] = measured(
        benchmark, command, output_path, local_scratch(output_path), cells, nbytes
    )


@pytest.fixture(scope="module")
def loopback_s3(tmp_path_factory):
    """A moto S3 server on a free loopback port and the bucket :data:`BUCKET`; the AWS
    environment points at it for this process and the processes it starts."""
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    values = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
              "AWS_DEFAULT_REGION": "us-east-1",
              "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}  # fmt: skip
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        from annlayout.storage.remote import filesystem

        filesystem(f"s3://{BUCKET}").mkdir(BUCKET)
        yield f"s3://{BUCKET}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.mark.benchmark(group=GROUP)
def test_scale_cluster(benchmark, collection, scale, output_path, results, loopback_s3):
    """The full shuffled run with ``--scheduler`` on two worker processes, scratch on S3."""
    distributed = pytest.importorskip("distributed")
    inputs, cells, nbytes = collection.prefix(scale.files)
    check_disk(output_path.parent, nbytes, "cluster")
    scratch = f"{loopback_s3}/scratch"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:  # fmt: skip
        command = concat_command(inputs, output_path, scale.memory, "--scheduler",
                                 cluster.scheduler_address, "--scratch", scratch)  # fmt: skip
        info = measured(benchmark, command, output_path, scratch, cells, nbytes)
        with distributed.Client(cluster) as client:
            peaks = client.run(_own_peak_rss)  # fresh processes: their peak in this run
    info["worker_peak_mb"] = sorted(round(p / MB, 1) for p in peaks.values())
    results["cluster full"] = info
    assert info["out_cells"] == cells


def _own_peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------- the report


ORDER = ["shuffled base", "shuffled full", "outer base", "outer full", "annbatch base",
         "annbatch largest", "outer annbatch largest", "cluster full"]  # fmt: skip


def render(results: dict[str, dict[str, Any]]) -> list[str]:
    header = ("run", "cells", "s", "s/M cells", "peak MB", "MB/M cells", "mixing bits",
              "in MB", "out MB", "scratch MB")  # fmt: skip
    lines = [header]
    for label in ORDER:
        if label not in results:
            continue
        r = results[label]
        mixing = f"{r['mixing_bits']:.3f}/{r['mixing_uniform']:.3f}" if "mixing_bits" in r else ""
        scratch = f"{r['scratch_peak_mb']:,.0f}" if "scratch_peak_mb" in r else ""
        lines.append((label, f"{r['cells']:,}", f"{r['seconds']:.1f}",
                      f"{r['seconds_per_million']:.1f}", f"{r['peak_mb']:,.0f}",
                      f"{r['peak_mb_per_million']:,.0f}", mixing, f"{r['input_mb']:,.0f}",
                      f"{r['output_mb']:,.0f}", scratch))  # fmt: skip
    return text_table(lines)


@pytest.mark.benchmark(group="scale: targets (not a timing)")
def test_scale_report(benchmark, results, collection, scale, bench_dir, terminal_report):
    """The table and the issue's targets (reported, not asserted: one round on whatever
    machine this is)."""
    if not results:
        pytest.skip("nothing was measured in this session")
    checks: list[str] = []

    def ratio(label: str, base: str, key: str, target: float | None, what: str) -> None:
        if label not in results or base not in results:
            checks.append(f"{what}: not measured")
            return
        value = results[label][key] / results[base][key]
        if target is None:  # a figure, not a target
            checks.append(f"{what}: {value:.2f}")
            return
        verdict = "ok" if value <= target else "MISSED"
        checks.append(f"{what}: {value:.2f} (target <= {target}) {verdict}")

    ratio("shuffled full", "shuffled base", "seconds_per_million", TARGET_LINEAR,
          "shuffled: s per million cells, full / baseline")  # fmt: skip
    limit = (parse_size(scale.memory) + RSS_ALLOWANCE) / MB
    for label in ("shuffled full", "outer full", "cluster full"):
        if label in results:
            peak = results[label]["peak_mb"]
            verdict = "ok" if peak <= limit else "MISSED"
            checks.append(f"{label}: peak RSS {peak:,.0f} MB (<= {limit:,.0f}) {verdict}")
    ratio("outer base", "annbatch base", "seconds", TARGET_ANNBATCH_TIME,
          "outer / annbatch at the baseline")  # fmt: skip
    largest = "outer full" if "annbatch largest" in results and results["annbatch largest"][
        "cells"] == results.get("outer full", {}).get("cells") else "outer annbatch largest"  # fmt: skip
    ratio(largest, "annbatch largest", "seconds", TARGET_ANNBATCH_TIME,
          "outer / annbatch at annbatch's largest size")  # fmt: skip
    ratio("shuffled base", "outer base", "seconds", None, "inner / outer at the baseline")
    ratio("shuffled full", "outer full", "seconds", None, "inner / outer at the full size")
    ratio("cluster full", "shuffled full", "seconds", None,
          "2 worker processes, scratch on S3 / local disk")  # fmt: skip
    prediction = results.get("annbatch prediction")
    if prediction:
        checks.append(
            f"annbatch: {prediction['peak_mb_per_million']:,.0f} MB of peak RSS per million "
            f"cells; the full collection would need ~{prediction['full_predicted_mb']:,.0f} MB "
            f"({prediction['limit_mb']:,.0f} MB allowed here)"
        )
    if "cluster full" in results:
        checks.append(f"cluster workers' peak RSS: {results['cluster full']['worker_peak_mb']} MB")
    p5, p50, p95 = collection.nnz_percentiles
    lines = render(results)
    lines.append(
        f"input: {scale.files} h5ad files, {sum(collection.cells):,} cells x {scale.genes:,} "
        f"genes, {sum(collection.nnz):,} nonzeros (per cell: 5th {p5:.0f}, median {p50:.0f}, "
        f"95th {p95:.0f}); baseline: the first {scale.base_files} files; --memory "
        f"{scale.memory}; wall time and peak RSS of whole processes (imports included); "
        f"mixing: written/uniform bits"
    )
    lines += checks
    table = "\n".join(lines)
    report = {
        "environment": {**environment(scale), "memory": scale.memory,
                        "shape": [sum(collection.cells), scale.genes]},
        "collection": {"files": scale.files, "cells": collection.cells, "nnz": collection.nnz,
                       "nnz_per_cell_percentiles": collection.nnz_percentiles},
        "results": results,
        "checks": checks,
        "median_seconds_per_million": statistics.median(
            r["seconds_per_million"] for r in results.values() if "seconds_per_million" in r
        ),
    }  # fmt: skip
    publish(benchmark, bench_dir, "scale", report, table, terminal_report)
