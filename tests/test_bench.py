"""annlayout bench: measured stores, workloads, equality checks, recommendation, reports."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
import yaml
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
from annlayout.layout.spec import LayoutError
from annlayout.storage.remote import filesystem

from .test_spec import schema_problems
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


def test_sharded_reads_are_counted_on_every_zarr(tmp_path):
    """zarr >= 3.4 reads a shard's chunks through get_ranges (or sync IO), past a wrapper's
    get: every fetch must still be counted, and no byte read uncounted."""
    path = tmp_path / "sharded.zarr"
    array = zarr.create_array(
        path, shape=(1000,), chunks=(100,), shards=(500,), dtype="i4", compressors=None
    )
    array[:] = np.arange(1000, dtype="i4")
    counters = Counters()
    measured = zarr.open_array(MeasuredStore(LocalStore(path, read_only=True), counters))
    counters.reset()
    np.testing.assert_array_equal(measured[250:450], np.arange(250, 450))
    # two shard indexes at least, and the three chunks' bytes at least
    assert counters.requests >= 2 and counters.bytes >= 3 * 100 * 4


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
        assert len(readers) == 4 * len(load_workload("cell-browser").patterns)
        assert {reader for _, reader in readers} == set(bench_readers.ROW_READERS)
        assert all(r.requests > 0 and r.bytes_read > 0 for r in candidate.results)
    from annlayout.bench.report import write_reports

    paths = write_reports(result, tmp_path / "out")
    recommended = annlayout.load_layout(paths["recommended"])
    assert recommended.name == result.winner.name
    # editors validating recommended.yaml against `annlayout schema` accept it
    assert schema_problems(yaml.safe_load(paths["recommended"].read_text())) == []
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
    assert variants[1].rule_for("X", "csr_matrix")[1].chunks.major == 256  # 64 x 4
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
    assert result.stdout.startswith("Recommended: ")
    # stderr is not a terminal here: one line per stage, so a CI log shows the run move
    lines = result.stderr.splitlines()
    stages = [line.split(" s  ", 1)[1] for line in lines if " s  " in line]
    assert stages[0] == "writing analysis" and "writing anndata-default" in stages
    assert "counting anndata-default: full scan (10000)" in stages
    assert stages[-5:] == [f"timing round {n} of 5" for n in range(1, 6)]
    # 400 cells are too few for row slices of 1,000: said once, with what still holds
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) == 2 and warnings[0].startswith("warning: row slices (1000): a batch")
    assert "fewer than 8 X chunks of analysis" in warnings[1]
    report = json.loads((out / "report.json").read_text())
    assert report["storage"] == "sim:rtt=1ms,concurrency=8"
    assert report["skipped_readers"] == []
    bad = CliRunner().invoke(
        main, ["bench", str(dataset), "-w", "analysis", "--storage", "ftp", "--out", str(out)]
    )
    assert bad.exit_code == 1 and "use local, sim:" in bad.stderr
    bad = CliRunner().invoke(
        main, ["bench", str(dataset), "-w", "analysis", "--sample", "half", "--out", str(out)]
    )
    assert bad.exit_code == 1
    assert bad.stderr.strip().endswith("--sample 'half': expected a number of cells, auto or all")


def test_bench_says_which_reader_it_skipped_without_the_bench_extra(tmp_path, dataset, monkeypatch):
    """Without xarray (as annlayout.base.optional finds packages), read_lazy is not measured: the
    CLI says so in one line naming the extra, and report.md, report.json and --json list it."""
    import annlayout.base.optional

    found = annlayout.base.optional.find_spec
    monkeypatch.setattr(
        annlayout.base.optional, "find_spec", lambda name: None if name == "xarray" else found(name)
    )
    args = ["bench", str(dataset), "-w", "analysis", "--layout", "analysis", "--rounds", "2"]
    refused = CliRunner().invoke(main, [*args, "--reader", "read_lazy", "--out", str(tmp_path)])
    assert refused.exit_code == 1
    assert refused.stderr.strip().endswith("--reader read_lazy: anndata's read_lazy needs xarray: "
                                           "pip install 'annlayout[bench]'")  # fmt: skip
    out = tmp_path / "report"
    args = [*args, "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + result.stderr
    reason = "anndata's read_lazy needs xarray: pip install 'annlayout[bench]'"
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == [f"note: read_lazy was not measured: {reason}"]
    report = json.loads((out / "report.json").read_text())
    assert report["skipped_readers"] == [{"reader": "read_lazy", "reason": reason}]
    patterns = report["candidates"][0]["patterns"]
    assert {p["reader"] for p in patterns} == {
        "annlayout", "sparse_dataset-zarrs", "sparse_dataset-zarr",
    }  # fmt: skip
    assert f"Skipped reader: read_lazy, not measured ({reason})." in (out / "report.md").read_text()

    quiet = CliRunner().invoke(main, [*args, "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == "" and quiet.stderr == ""
    as_json = CliRunner().invoke(main, [*args, "--json"])
    assert as_json.exit_code == 0 and as_json.stderr == ""
    summary = json.loads(as_json.output)
    assert summary["recommended"] == "analysis" and summary["workload"] == "analysis"
    assert summary["score"] == pytest.approx(1.0) and summary["cost_per_epoch"] > 0
    assert summary["reports"]["recommended"] == str(out / "recommended.yaml")
    assert summary["skipped_readers"] == [{"reader": "read_lazy", "reason": reason}]
    assert summary["verdict"]["kind"] == "only candidate" and summary["verdict"]["reason"]
    assert summary["interval"].startswith("min to max of 2 rounds")


def test_bench_skips_the_zarrs_pipeline_when_zarrs_is_missing(tmp_path, dataset, monkeypatch):
    import annlayout.base.optional

    found = annlayout.base.optional.find_spec
    monkeypatch.setattr(
        annlayout.base.optional, "find_spec", lambda name: None if name == "zarrs" else found(name)
    )
    result = run_bench(
        dataset, load_workload("analysis"), workdir=tmp_path, layouts=["analysis"], rounds=2
    )
    assert result.skipped_readers == {
        "sparse_dataset-zarrs": "the zarrs codec pipeline needs zarrs: pip install zarrs"
    }
    assert "sparse_dataset-zarr" in {r.reader for r in result.candidates[0].results}


def test_the_cli_offers_every_reader():
    from annlayout.cli import bench_command

    option = next(p for p in bench_command.params if p.name == "reader")
    assert tuple(option.type.choices) == bench_readers.READERS


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


# --------------------------------------------------------------------------- cost model


def test_requests_are_counted_by_kind(array_store):
    """GET per get (and per range), PUT per set, LIST per list call, HEAD per exists and
    getsize: exact on a 10-chunk uncompressed array of 100 int32s per chunk."""
    counters = Counters()
    store = MeasuredStore(LocalStore(array_store), counters)
    array = zarr.open_array(store)
    counters.reset()
    array[250:450]  # chunks 2, 3, 4
    assert counters.by_kind() == {"GET": 3, "PUT": 0, "LIST": 0, "HEAD": 0}
    assert counters.bytes == 1200
    counters.reset()
    array[0:100] = np.full(100, 7, dtype="i4")  # a whole chunk: written, never read
    assert counters.by_kind() == {"GET": 0, "PUT": 1, "LIST": 0, "HEAD": 0}
    counters.reset()
    array[100:150] = np.full(50, 7, dtype="i4")  # half a chunk: read, merged, written
    assert counters.by_kind() == {"GET": 1, "PUT": 1, "LIST": 0, "HEAD": 0}
    assert counters.bytes == 400

    async def lists_and_heads():
        assert await store.exists("zarr.json")
        assert await store.getsize("c/1") == 400
        assert len([k async for k in store.list()]) == 11  # zarr.json and 10 chunks
        assert "c/3" in [k async for k in store.list_prefix("c/")]
        assert "c" in [k async for k in store.list_dir("")]

    counters.reset()
    asyncio.run(lists_and_heads())
    assert counters.by_kind() == {"GET": 0, "PUT": 0, "LIST": 3, "HEAD": 2}
    assert counters.bytes == 0


COST_WORKLOAD = {
    "workload": 1,
    "name": "every-kind",
    "patterns": [{"kind": kind, **params} for kind, params in PATTERNS.items()],
}
# on the full 400 x 150 dataset (2 categories in obs "group"), whatever the sample
EPOCH_OPS = {
    "random rows (16)": 25,  # 400 / 16
    "row slices (20)": 20,  # 400 / 20
    "gene queries (2)": 75,  # 150 / 2
    "category, 2 genes": 150,  # 2 categories x 150 / 2
    "obs columns": 2,  # count: 2
    "full scan (50)": 8,  # 400 / 50 blocks = one scan
}

# what an operation reads on the full 400 cells over the 200-cell sample: every cell for gene
# queries, obs columns and a category's cells; a 50-cell block is one on both; a batch too
EPOCH_SCALE = {
    "random rows (16)": 1.0, "row slices (20)": 1.0, "gene queries (2)": 2.0,
    "category, 2 genes": 2.0, "obs columns": 2.0, "full scan (50)": 1.0,
}  # fmt: skip


@pytest.fixture(scope="module")
def priced(tmp_path_factory, dataset):
    """One sampled run over every pattern kind, priced with the shipped defaults."""
    return run_bench(
        dataset, Workload.model_validate(COST_WORKLOAD), workdir=tmp_path_factory.mktemp("cost"),
        layouts=["ml-minibatch", "cell-browser"], sample=200,
    )  # fmt: skip


def test_dollars_per_epoch_are_dollars_per_op_times_ops_per_epoch(priced):
    from annlayout.bench.cost import load_prices

    prices = load_prices()
    assert (prices.get_per_1000, prices.list_per_1000, prices.egress_per_gb) == (
        0.0004, 0.005, 0.09,
    )  # fmt: skip
    assert priced.full_shape == (400, 150) and priced.sample == 200
    for candidate in priced.candidates:
        for r in candidate.results:
            assert r.ops_per_epoch == EPOCH_OPS[r.pattern]
            n = r.counted  # per op on the sample, scaled to the full dataset
            assert r.scale == EPOCH_SCALE[r.pattern]
            by_hand = r.scale * (
                (r.requests / n * 0.0004 + r.heads / n * 0.0004 + (r.puts + r.lists) / n * 0.005)
                / 1000
                + r.bytes_read / n / 2**30 * 0.09
            )
            assert r.dollars_per_op == pytest.approx(by_hand)
            assert r.dollars_per_epoch == pytest.approx(by_hand * EPOCH_OPS[r.pattern])
            assert r.puts == 0  # reading writes nothing
        ours = [r for r in candidate.results if r.reader == "annlayout"]
        assert len(ours) == len(EPOCH_OPS)
        assert candidate.cost_per_epoch == pytest.approx(sum(r.dollars_per_epoch for r in ours))
        assert candidate.cost_per_epoch > 0


def test_the_objective_decides(priced):
    """time picks the best score, cost the fewest dollars, balanced the lowest geometric mean:
    with the cheapest candidate made the slowest, time and cost disagree."""
    from annlayout.bench.score import cost, recommend

    candidates = priced.candidates
    cheapest = min(candidates, key=lambda c: c.cost_per_epoch)
    other = next(c for c in candidates if c is not cheapest)
    assert cheapest.cost_per_epoch < other.cost_per_epoch
    cheapest.score, other.score = 3.0, 1.0
    cheapest.rounds, other.rounds = [3.0] * 5, [1.0] * 5  # 3x slower in every round
    cost(candidates)
    assert recommend(candidates, "time") is other
    assert recommend(candidates, "cost") is cheapest
    ratio = other.cost_per_epoch / cheapest.cost_per_epoch
    assert other.balanced == pytest.approx(ratio**0.5)
    assert cheapest.balanced == pytest.approx(3.0**0.5)
    assert recommend(candidates, "balanced") is (other if ratio < 3 else cheapest)


def test_bench_cli_objective_cost_and_prices(tmp_path, dataset):
    """--objective cost with bytes made expensive (every candidate of this small dataset makes
    the same GETs): the winner is the cheapest candidate by report.json's dollars, and
    recommended.yaml says why and still loads."""
    prices = tmp_path / "dear-bytes.yaml"
    prices.write_text(
        "prices: 1\nname: dear bytes\nget_per_1000: 0\nhead_per_1000: 0\negress_per_gb: 1000\n"
    )
    out = tmp_path / "report"
    args = ["bench", str(dataset), "-w", "cell-browser", "--layout", "ml-minibatch",
            "--layout", "cell-browser", "--sample", "200", "--out", str(out)]  # fmt: skip
    from annlayout.bench.cost import money

    result = CliRunner().invoke(main, [*args, "--objective", "cost", "--prices", str(prices)])
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["objective"] == "cost"
    assert report["prices"]["get_per_1000"] == 0 and report["prices"]["egress_per_gb"] == 1000
    assert report["full_shape"] == [400, 150]
    assert report["ops_per_epoch"] == {"gene queries (1)": 150, "category, 5 genes": 60,
                                       "random rows (32)": 13}  # fmt: skip
    eligible = [c for c in report["candidates"] if c["excluded"] is None]
    cheapest = min(eligible, key=lambda c: c["cost_per_epoch"])
    assert report["winner"] == cheapest["name"]
    for candidate in report["candidates"]:  # requests free, $1,000 a GB: dollars are bytes
        by_bytes = candidate["bytes_per_epoch"] / 2**30 * 1000
        assert candidate["cost_per_epoch"] == pytest.approx(by_bytes)
    text = (out / "recommended.yaml").read_text()
    assert text.startswith("# Recommended by `annlayout bench`")
    why = next(line for line in text.splitlines() if "--objective cost" in line)
    assert f"${money(cheapest['cost_per_epoch'])} per epoch" in why
    assert "GET" in text.split("Per workload epoch: ")[1].splitlines()[0]
    assert annlayout.load_layout(out / "recommended.yaml").name == cheapest["name"]
    markdown = (out / "report.md").read_text()
    assert "## Cost" in markdown and "dear bytes" in markdown and "| $ per epoch |" in markdown
    assert "Objective: **cost**" in markdown and "200-cell sample" in markdown


@pytest.mark.parametrize(
    ("text", "field"),
    [("get_per_1000: cheap\n", "get_per_1000"), ("get_per_100: 1\n", "get_per_100"),
     ("egress_per_gb: -1\n", "egress_per_gb")],
)  # fmt: skip
def test_bench_cli_bad_prices_file(tmp_path, dataset, text, field):
    prices = tmp_path / "prices.yaml"
    prices.write_text("prices: 1\n" + text)
    result = CliRunner().invoke(
        main, ["bench", str(dataset), "-w", "analysis", "--prices", str(prices),
               "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "prices.yaml:2" in lines[0] and field in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_dollars_are_written_without_exponents():
    from annlayout.bench.cost import money

    assert money(0.0000185) == "0.0000185"
    assert money(0.012345) == "0.0123"
    assert money(1234.5678) == "1,234.57"
    assert money(0) == "0.00" and money(3) == "3.00"


# --------------------------------------------------------------------------- trust


def _candidate(name, rounds, size, objects=10, write=1.0, orientations=("csr",)):
    from annlayout.bench.candidates import Candidate

    candidate = Candidate(name=name, layout=annlayout.load_layout("analysis"), origin="given")
    candidate.rounds, candidate.size, candidate.objects = list(rounds), size, objects
    candidate.write_seconds, candidate.x_orientations = write, list(orientations)
    candidate.score = float(np.median(rounds))
    candidate.low, candidate.high = min(rounds), max(rounds)
    candidate.cost_per_epoch = 1.0
    candidate.balanced_interval = (1.0, 1.0)
    return candidate


def test_verdict_a_clear_winner_leads_in_every_round_else_a_tie_broken_by_size():
    from annlayout.bench.score import verdict

    fast = _candidate("fast", [1.0, 1.0, 1.0, 1.0, 1.0], size=2000)
    slow = _candidate("slow", [1.3, 1.2, 1.6, 1.25, 1.4], size=1000)
    clear = verdict([slow, fast])
    assert clear.clear and clear.kind == "clear winner" and clear.winner is fast
    # one round where slow is within 5% of fast: no clear lead, a tie, the smaller wins
    close = _candidate("close", [1.3, 1.04, 1.6, 1.25, 1.4], size=1000)
    tie = verdict([close, fast])
    assert not tie.clear and tie.kind == "tie" and tie.best is fast and tie.winner is close
    assert [c.name for c in tie.tied] == ["fast", "close"]
    assert tie.tie_break == "the smallest on disk (1000 B, 50% less than the next, 2.0 KiB)"
    # the same size (within 1%): fewer objects; the same objects too: the faster write
    twin = _candidate("twin", [1.02, 1.0, 1.03, 1.01, 0.99], size=2010, objects=5)
    assert verdict([twin, fast]).winner is twin
    assert "fewest objects (5 against 10)" in verdict([twin, fast]).tie_break
    twin.objects, twin.write_seconds = 10, 0.5
    assert verdict([twin, fast]).winner is twin
    assert "fastest to write" in verdict([twin, fast]).tie_break


def test_a_copy_no_pattern_reads_is_never_recommended(tmp_path, dataset):
    """ml-minibatch reads rows only: cell-browser's CSC copy is never read (its bytes are
    counted per element), so it is excluded however fast it is; with --reader
    sparse_dataset-zarr (anndata never reads the copy) so is it for gene queries."""
    result = run_bench(
        dataset, load_workload("ml-minibatch"), workdir=tmp_path / "rows",
        layouts=["ml-minibatch", "cell-browser"], rounds=2,
    )  # fmt: skip
    browser = next(c for c in result.candidates if c.name == "cell-browser")
    assert browser.excluded == "carries a csc copy of X that no pattern reads (annlayout reader)"
    assert result.winner.name == "ml-minibatch"
    assert all(r.copy_bytes == 0 for r in browser.results)

    genes = Workload.model_validate(
        {"workload": 1, "name": "genes", "patterns": [{"kind": "gene-queries", "queries": 3}]}
    )
    ours = run_bench(
        dataset, genes, workdir=tmp_path / "genes", layouts=["ml-minibatch", "cell-browser"],
        rounds=2,
    )  # fmt: skip
    browser = next(c for c in ours.candidates if c.name == "cell-browser")
    assert browser.excluded is None and any(r.copy_bytes for r in browser.ours())
    theirs = run_bench(
        dataset, genes, workdir=tmp_path / "theirs", layouts=["ml-minibatch", "cell-browser"],
        rounds=2, reader="sparse_dataset-zarr", readers=("annlayout", "sparse_dataset-zarr"),
    )  # fmt: skip
    assert {r.reader for r in theirs.candidates[0].results} == {"annlayout", "sparse_dataset-zarr"}
    assert theirs.skipped_readers == {}  # readers not asked for are not skipped ones
    with pytest.raises(BenchError, match="--reader read_lazy: not among the readers measured"):
        run_bench(dataset, genes, workdir=tmp_path, reader="read_lazy", readers=("annlayout",))
    assert theirs.reader == "sparse_dataset-zarr" and theirs.winner.name == "ml-minibatch"
    browser = next(c for c in theirs.candidates if c.name == "cell-browser")
    assert browser.excluded == (
        "carries a csc copy of X that no pattern reads (sparse_dataset-zarr reader)"
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """4,000 cells x 1,000 genes, 600 nonzeros a cell (2.4M): X spans two of the analysis
    layout's 8 MiB chunks, so a CSC copy and small chunks pay off clearly; small enough for
    seconds."""
    from annlayout.generate.synthetic import make_dataset

    path = tmp_path_factory.mktemp("generated") / "g.h5ad"
    make_dataset(4000, 1000, nnz_per_cell=600, n_pcs=4).write_h5ad(path)
    return path


def _twice(path, workload, layouts, tmp_path, seeds=(1, 2), readers=("annlayout",)):
    """The verdict of two runs of ``workload`` with different seeds (the scoring reader
    only, which is all the verdict reads: seconds, not minutes)."""
    out = []
    for seed in seeds:
        seeded = workload.model_copy(update={"seed": seed})
        result = run_bench(
            path, seeded, workdir=tmp_path / str(seed), layouts=layouts, readers=readers
        )
        out.append(result.verdict)
    return out


def _same(first, second):
    rounds = [[(c.name, [round(x, 2) for x in c.rounds]) for c in v.tied] for v in (first, second)]
    assert (first.kind, first.winner.name) == (second.kind, second.winner.name), rounds
    assert sorted(c.name for c in first.tied) == sorted(c.name for c in second.tied)


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """Two layouts that differ only in X's chunks, 16 cells or all 4,000, gzip-compressed
    (slow to decode, so what a read decodes is what it costs)."""
    folder = tmp_path_factory.mktemp("layouts")
    for rows in (16, 4000):
        (folder / f"rows{rows}.yaml").write_text(
            f"annlayout: 1\nname: rows{rows}\ntarget: {{format: zarr, zarr_format: 3}}\n"
            "defaults: {chunks: {bytes: 1MiB}, shards: none, codecs: [{name: gzip, level: 6}]}\n"
            "rules:\n  - match: {path: [X], encoding: [csr_matrix]}\n"
            f"    chunks: {{major: {rows}}}\n    orientations: [csr]\n"
        )
    return [str(folder / "rows16.yaml"), str(folder / "rows4000.yaml")]


@pytest.mark.parametrize(
    ("pattern", "answer"),
    [
        # one gene from the CSC copy, not every chunk of the CSR
        ({"kind": "gene-queries", "genes": 1, "queries": 6}, "cell-browser"),
        # 64 random cells: 64 chunks of 16 cells, not all 4,000 cells decoded
        ({"kind": "random-rows", "batch_size": 64, "batches": 6}, "rows16"),
        # a scan in blocks of 500: each block decodes the one 4,000-cell chunk whole
        ({"kind": "full-scan", "block_rows": 500}, "rows16"),
    ],
)
def test_the_known_answer_is_a_clear_winner_whatever_the_seed(
    tmp_path, generated, chunked, pattern, answer
):
    layouts = ["anndata-default", "cell-browser"] if pattern["kind"] == "gene-queries" else chunked
    workload = Workload.model_validate({"workload": 1, "name": "w", "patterns": [pattern]})
    first, second = _twice(generated, workload, layouts, tmp_path)
    _same(first, second)
    assert first.clear and first.winner.name == answer


def test_a_workload_without_a_clear_winner_is_a_tie_with_its_tie_break(tmp_path, generated):
    """Two candidates with the same layout under two names are equally fast: a tie, broken
    by the stated rule, and report.md opens with it."""
    from annlayout.bench.report import write_reports

    twin = tmp_path / "twin.yaml"
    twin.write_text(
        annlayout.load_layout("ml-minibatch").to_yaml().replace("name: ml-minibatch", "name: twin")
    )
    workload = Workload.model_validate(
        {"workload": 1, "name": "w", "patterns": [{"kind": "random-rows", "batch_size": 64}]}
    )
    result = run_bench(
        generated, workload, workdir=tmp_path / "w", layouts=["ml-minibatch", str(twin)],
        readers=("annlayout", "sparse_dataset-zarr"),
    )  # fmt: skip
    assert result.verdict.kind == "tie" and len(result.verdict.tied) == 2
    assert "fastest to write" in result.verdict.tie_break  # same bytes, same objects
    paths = write_reports(result, tmp_path / "out")
    opening = paths["markdown"].read_text().split("\n\n")[1]
    assert opening.startswith(f"Recommended: **{result.winner.name}**, from a tie of 2")
    assert opening.count(". ") == 1 and "The tie is broken by bytes on disk" in opening
    report = json.loads(paths["json"].read_text())
    assert report["verdict"]["kind"] == "tie" and report["verdict"]["reason"]
    for candidate in report["candidates"]:
        low, high = candidate["score_interval"]
        assert low <= candidate["score"] <= high and len(candidate["round_scores"]) == 5
        for pattern in candidate["patterns"]:
            assert pattern["interval"][0] <= pattern["median"] <= pattern["interval"][1]
    assert paths["svg"].read_text().lstrip().startswith("<?xml")


def test_pbmc68k_reduced_gives_the_same_verdict_whatever_the_seed(tmp_path):
    """The issue's case: on 700 cells ml-minibatch picked cell-browser or anndata-default by
    seed, and 10-gene queries likewise. Now both seeds agree, and 256-cell batches on 700
    cells are said to be too large to mean much."""
    from .test_corpus import corpus

    pbmc = corpus("scanpy-pbmc68k_reduced.h5ad")
    layouts = ["anndata-default", "cell-browser"]
    minibatch = load_workload("ml-minibatch").model_copy(
        update={"patterns": [load_workload("ml-minibatch").patterns[0].model_copy(
            update={"batches": 9})]}
    )  # fmt: skip
    first, second = _twice(pbmc, minibatch, layouts, tmp_path / "rows", seeds=(0, 1))
    _same(first, second)
    genes = Workload.model_validate(
        {"workload": 1, "name": "genes",
         "patterns": [{"kind": "gene-queries", "genes": 10, "queries": 6}]}
    )  # fmt: skip
    first, second = _twice(pbmc, genes, layouts, tmp_path / "genes", seeds=(1, 2))
    _same(first, second)
    result = run_bench(pbmc, minibatch, workdir=tmp_path / "w", layouts=["anndata-default"])
    (batch,) = [w for w in result.warnings if "a batch of 256 cells is 37% of the 700 cells" in w]
    assert batch.endswith("each reader on a dataset of 700 cells, but not on a larger one")
    sampled = run_bench(
        pbmc, minibatch, workdir=tmp_path / "s", layouts=["anndata-default"], sample=500,
        readers=("annlayout",),
    )  # fmt: skip
    assert sampled.warnings[0].endswith("Give --sample 2,560 or more cells")


def test_auto_sample_is_sized_from_the_workload(generated):
    from annlayout.bench.candidates import initial_candidates
    from annlayout.bench.runner import auto_sample

    rows = Workload.model_validate(
        {"workload": 1, "name": "w", "patterns": [{"kind": "random-rows", "batch_size": 32}]}
    )
    small = initial_candidates(["ml-minibatch"], print)
    assert auto_sample(generated, rows, small) == 4000  # 10,000 at least, never more than all
    # 8 chunks of 64 rows and a tenth more (more than the 320 a batch of 32 needs at 10%)
    assert auto_sample(generated, rows, small, floor=0) == 564
    scan = Workload.model_validate(
        {"workload": 1, "name": "w", "patterns": [{"kind": "full-scan", "block_rows": 2000}]}
    )
    assert auto_sample(generated, scan, small, floor=0) == 2000  # one whole block
    large = initial_candidates(["analysis"], print)  # 8 MiB chunks: all 4,000 cells and more
    assert auto_sample(generated, rows, large, floor=0) == 4000
