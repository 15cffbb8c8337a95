"""annlayout bench: measured stores, workloads, equality checks, recommendation, reports."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from zarr.storage import LocalStore

import annlayout
from annlayout.bench import (
    BenchError,
    Counters,
    MeasuredStore,
    Workload,
    load_workload,
    parse_storage,
    run_bench,
    search_variants,
    shipped_workloads,
)
from annlayout.bench import readers as bench_readers
from annlayout.cli import main
from annlayout.remote import filesystem
from annlayout.spec import LayoutError

from .test_stream import make_input


@pytest.fixture
def array_store(tmp_path):
    path = tmp_path / "a.zarr"
    array = zarr.create_array(path, shape=(1000,), chunks=(100,), dtype="i4", compressors=None)
    array[:] = np.arange(1000, dtype="i4")
    return path


def test_requests_and_bytes_are_counted_exactly(array_store):
    counters = Counters()
    array = zarr.open_array(MeasuredStore(LocalStore(array_store, read_only=True), counters))
    counters.reset()
    np.testing.assert_array_equal(array[250:450], np.arange(250, 450))
    assert (counters.requests, counters.bytes) == (3, 3 * 100 * 4)  # chunks 2, 3, 4
    counters.reset()
    array[:]
    assert (counters.requests, counters.bytes) == (10, 4000)


def test_simulated_latency_and_concurrency(array_store):
    simulation = parse_storage("sim:rtt=20ms,concurrency=2")
    store = MeasuredStore(LocalStore(array_store, read_only=True), Counters(), simulation)
    array = zarr.open_array(store)
    store.counters.reset()
    started = time.perf_counter()
    array[:]
    elapsed = time.perf_counter() - started
    assert store.counters.requests == 10
    assert elapsed >= 5 * 0.020  # 10 requests, 2 at a time, 20 ms each


def test_simulated_bandwidth(array_store):
    store = MeasuredStore(
        LocalStore(array_store, read_only=True), Counters(), parse_storage("sim:bandwidth=40kB/s")
    )
    array = zarr.open_array(store)
    started = time.perf_counter()
    array[:]
    assert time.perf_counter() - started >= 4000 / 40_000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sim:rtt=fast", "expected e.g. 20ms"),
        ("sim:bandwidth=lots", "expected e.g. 200MB/s"),
        ("sim:concurrency=0", "positive integer"),
        ("sim:jitter=1", "unknown setting 'jitter'"),
        ("nfs", "use local, sim:"),
    ],
)
def test_storage_spec_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_storage(text)


def test_shipped_workloads_and_located_errors(tmp_path):
    assert set(shipped_workloads()) >= {"ml-minibatch", "cell-browser", "analysis"}
    for name in shipped_workloads():
        assert load_workload(name).patterns
    bad = tmp_path / "w.yaml"
    bad.write_text("workload: 1\nname: w\npatterns:\n  - kind: random-rows\n    batch_sise: 4\n")
    with pytest.raises(LayoutError) as info:
        load_workload(bad)
    assert info.value.messages == [
        "w.yaml:5: patterns[0].batch_sise: unknown key 'batch_sise'; did you mean 'batch_size'?"
    ]
    with pytest.raises(LayoutError, match="did you mean 'analysis'"):
        load_workload("analisys")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "in.h5ad"
    make_input(path, "csr")
    return path


def test_bench_recommends_a_layout_apply_accepts(tmp_path, dataset):
    result = run_bench(
        dataset,
        load_workload("cell-browser"),
        workdir=tmp_path / "work",
        layouts=["ml-minibatch", "cell-browser"],
    )
    names = {c.name for c in result.candidates}
    assert names == {"ml-minibatch", "cell-browser"}
    for candidate in result.candidates:
        readers = {(r.pattern, r.reader) for r in candidate.results}
        assert len(readers) == 3 * len(load_workload("cell-browser").patterns)
        assert {reader for _, reader in readers} == {"annlayout", "sparse_dataset", "read_lazy"}
        assert all(r.requests > 0 and r.bytes_read > 0 for r in candidate.results)
    from annlayout.bench.report import write_reports

    paths = write_reports(result, tmp_path / "out")
    recommended = annlayout.load_layout(paths["recommended"])
    assert recommended.name == result.winner.name
    assert paths["recommended"].read_text().startswith("# Recommended by `annlayout bench`")
    report = json.loads(paths["json"].read_text())
    assert report["winner"] == result.winner.name and len(report["candidates"]) == 2
    assert paths["png"].stat().st_size > 10_000
    assert "| layout | reader | operations | median ms" in paths["markdown"].read_text()
    applied = annlayout.apply(paths["recommended"], dataset, tmp_path / "applied.zarr")
    assert applied.verified


PATTERNS = {
    "random-rows": {"batch_size": 16, "batches": 2},
    "row-slices": {"length": 20, "slices": 2},
    "gene-queries": {"genes": 2, "queries": 2},
    "category-genes": {"genes": 2, "queries": 2},
    "obs-columns": {"count": 2},
    "full-scan": {"block_rows": 50},
}


@pytest.mark.parametrize("kind", list(PATTERNS))
def test_a_wrong_answer_cannot_win(tmp_path, dataset, monkeypatch, kind):
    """Every pattern's answers are compared across candidates: a reader that is wrong on one
    candidate stops the benchmark."""
    real = bench_readers._annlayout_reader

    def lying(handle):
        read = real(handle)
        if "cell-browser" not in str(handle.source):
            return read
        return lambda op: read(op) * 2 if op.column is None else np.asarray(read(op))[:-1]

    monkeypatch.setattr(bench_readers, "_annlayout_reader", lying)
    workload = Workload.model_validate(
        {"workload": 1, "name": kind, "patterns": [{"kind": kind, **PATTERNS[kind]}]}
    )
    with pytest.raises(BenchError, match=r"cell-browser .* differently from the first candidate"):
        run_bench(dataset, workload, workdir=tmp_path, layouts=["ml-minibatch", "cell-browser"])


def test_search_variants_and_constraints(tmp_path, dataset):
    variants = search_variants(annlayout.load_layout("ml-minibatch"))
    assert [v.name for v in variants] == [
        "ml-minibatch-chunks-div4", "ml-minibatch-chunks-x4", "ml-minibatch-zstd", "ml-minibatch-dual",
    ]  # fmt: skip
    assert variants[1].rule_for("X", "csr_matrix")[1].chunks.major == 64  # 16 x 4
    result = run_bench(
        dataset, load_workload("ml-minibatch"), workdir=tmp_path,
        layouts=["ml-minibatch", "cell-browser"], max_size=1.2, sample=200,
    )  # fmt: skip
    assert result.sample == 200
    dual = next(c for c in result.candidates if c.name == "cell-browser")
    assert dual.excluded and "size" in dual.excluded
    assert result.winner.name == "ml-minibatch"


def test_bench_cli_on_simulated_storage(tmp_path, dataset):
    out = tmp_path / "report"
    result = CliRunner().invoke(
        main,
        ["bench", str(dataset), "--workload", "analysis", "--layout", "analysis",
         "--layout", "anndata-default", "--storage", "sim:rtt=1ms,concurrency=8", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    assert "recommended" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["storage"] == "sim:rtt=1ms,concurrency=8"
    bad = CliRunner().invoke(
        main, ["bench", str(dataset), "-w", "analysis", "--storage", "ftp", "--out", str(out)]
    )
    assert bad.exit_code == 1 and "use local, sim:" in bad.stderr


def test_bench_reads_its_input_from_s3(tmp_path, dataset, s3):
    remote = f"{s3}/bench-input.zarr"
    annlayout.apply("analysis", dataset, remote)
    result = run_bench(
        remote, load_workload("analysis"), workdir=tmp_path, layouts=["analysis"], sample=100
    )
    assert result.winner.name == "analysis"


def test_bench_measures_candidates_on_s3(tmp_path, dataset, s3):
    """--storage s3://...: candidates written to the object store, read and counted there,
    then removed."""
    out = tmp_path / "report"
    storage = f"{s3}/bench-candidates"
    result = CliRunner().invoke(
        main,
        ["bench", str(dataset), "--workload", "ml-minibatch", "--layout", "ml-minibatch",
         "--layout", "analysis", "--sample", "300", "--storage", storage, "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["storage"] == storage
    for candidate in report["candidates"]:
        assert candidate["size"] > 0 and candidate["objects"] > 0
        for pattern in candidate["patterns"]:
            assert pattern["requests"] > 0 and pattern["bytes_read"] > 0
    assert not filesystem(storage).exists(storage)  # scratch candidates removed
