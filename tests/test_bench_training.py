"""bench's training patterns: a loader epoch through annlayout's loader and annbatch's
Loader, its mixing, min_mixing, the loader settings in the recommendation."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from annlayout.bench import BenchError, Workload, load_workload, run_bench
from annlayout.bench import readers as bench_readers
from annlayout.bench.report import outcome, write_reports

N_OBS, GROUPS = 2000, 8


def _adata(order: np.ndarray) -> ad.AnnData:
    """2,000 cells in 8 groups of 250, rows in ``order`` (each cell's values and group go
    with it)."""
    rng = np.random.default_rng(0)
    x = sp.random(N_OBS, 100, density=0.05, format="csr", dtype=np.float32, random_state=rng)
    group = np.repeat(np.arange(GROUPS), N_OBS // GROUPS).astype(str)
    adata = ad.AnnData(X=x, obs=pd.DataFrame({"group": pd.Categorical(group)}))
    adata.obs_names = [f"c{i}" for i in range(N_OBS)]
    return adata[order].copy()


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same cells in group order and shuffled, and layouts of 25 and 2,000 rows a chunk."""
    folder = tmp_path_factory.mktemp("training")
    paths = {}
    for name, order in [
        ("ordered", np.arange(N_OBS)),
        ("shuffled", np.random.default_rng(1).permutation(N_OBS)),
    ]:
        paths[name] = folder / f"{name}.h5ad"
        _adata(order).write_h5ad(paths[name])
    for rows in (25, 2000):
        paths[f"rows{rows}"] = layout = folder / f"rows{rows}.yaml"
        layout.write_text(
            f"annlayout: 1\nname: rows{rows}\ntarget: {{format: zarr, zarr_format: 3}}\n"
            "defaults: {chunks: {bytes: 1MiB}, shards: none}\n"
            "rules:\n  - match: {path: [X], encoding: [csr_matrix]}\n"
            f"    chunks: {{major: {rows}}}\n    orientations: [csr]\n"
        )
    return paths


def _training(**pattern) -> Workload:
    return Workload.model_validate(
        {"workload": 1, "name": "t", "patterns": [{"kind": "training", **pattern}]}
    )


def test_the_shipped_training_workload():
    (pattern,) = load_workload("training").patterns
    assert pattern.kind == "training" and pattern.batch_size == 4096 and pattern.label is None


def test_mixing_is_low_on_an_ordered_store_and_full_on_a_shuffled_one(tmp_path, stores):
    """The loader's default blocks (runs of 25-row chunks, 500 rows on average), one a
    buffer: a batch of 100 holds the rows of one block, so on the store in group order a
    group or three of the 8 (1-2 bits of 3); on the shuffled one, any."""
    workload = _training(batch_size=100, buffer=1, label="group")
    mixing = {}
    for name in ("ordered", "shuffled"):
        result = run_bench(
            stores[name], workload, workdir=tmp_path / name, layouts=[str(stores["rows25"])],
            rounds=2, sample=None, readers=("annlayout",),
        )  # fmt: skip
        (r,) = result.candidates[0].results
        assert r.reader == "annlayout" and r.rows == 2 * N_OBS  # two whole epochs
        assert r.operations == 2 * N_OBS // 100 and r.throughput > 0
        assert r.settings == {"batch_size": 100, "block": None, "block_rows": 500, "buffer": 1,
                              "rows": N_OBS}  # fmt: skip
        assert r.label == "obs column 'group'"
        assert r.mixing_uniform == pytest.approx(3.0, abs=0.05)  # 8 equal groups: 3 bits
        mixing[name] = r.mixing_ratio
    assert mixing["ordered"] < 0.75
    assert mixing["shuffled"] > 0.95


def test_min_mixing_excludes_a_candidate_with_its_reason(tmp_path, stores):
    """On the ordered store, 25-row chunks (a buffer of one default block, 500 rows) mix the
    groups far less than one 2,000-row chunk (the whole store in one buffer): min_mixing 0.9
    excludes the first however fast it is; the report says why and names the loader
    settings."""
    workload = _training(batch_size=100, buffer=1, label="group", min_mixing=0.9)
    layouts = [str(stores["rows25"]), str(stores["rows2000"])]
    result = run_bench(
        stores["ordered"], workload, workdir=tmp_path / "w", layouts=layouts, rounds=2,
        sample=None, readers=("annlayout",),
    )  # fmt: skip
    small = next(c for c in result.candidates if c.name == "rows25")
    assert small.excluded is not None and small.excluded.startswith("mixing 0.")
    assert "< min_mixing 0.9 (training (4096)" not in small.excluded
    assert small.excluded.endswith(
        "< min_mixing 0.9 (training (100), obs column 'group', annlayout loader)"
    )
    assert result.winner.name == "rows2000"
    paths = write_reports(result, tmp_path / "out")
    markdown = paths["markdown"].read_text()
    assert small.excluded in markdown and "## Loader settings" in markdown
    assert "Loader for training (100): annlayout.open(store).batches(100, shuffle=True, " in (
        paths["recommended"].read_text()
    )
    (loader,) = json.loads(paths["json"].read_text())["loader"]
    assert loader["block"] is None and loader["block_rows"] == 2000 and loader["buffer"] == 1
    assert loader["mixing"] > 0.9 and loader["min_mixing"] == 0.9
    assert outcome(result, paths)["loader"][0]["buffer"] == 1

    everyone = _training(batch_size=100, buffer=1, block=25, label="group", min_mixing=0.9)
    with pytest.raises(BenchError, match=r"every candidate breaks .* or min_mixing"):
        run_bench(
            stores["ordered"], everyone, workdir=tmp_path / "e", layouts=layouts, rounds=2,
            sample=None, readers=("annlayout",),
        )  # fmt: skip


def test_search_explores_chunks_with_block_and_buffer(tmp_path, stores):
    result = run_bench(
        stores["shuffled"], _training(batch_size=100, block=25, label="group"), workdir=tmp_path,
        layouts=[str(stores["rows25"])], rounds=2, sample=None, readers=("annlayout",),
        search=True,
    )  # fmt: skip
    names = {c.name for c in result.candidates}
    assert {"rows25-chunks-div4", "rows25-chunks-x4"} <= names  # chunk sizes
    # block and buffer around the measured 25 rows and 32 blocks (8 batches of 100)
    assert {
        "rows25 (block 6, buffer 128)", "rows25 (block 100, buffer 8)",
        "rows25 (block 25, buffer 128)",
    } <= names  # fmt: skip
    variant = next(c for c in result.candidates if c.name == "rows25 (block 100, buffer 8)")
    (r,) = variant.results
    assert r.settings["block"] == 100 and r.settings["buffer"] == 8
    assert variant.location == next(c for c in result.candidates if c.name == "rows25").location
    entries = result.loader()
    assert len(entries) == 1 and entries[0]["reader"] == "annlayout"
    winner = result.winner.results[0].settings
    assert entries[0]["buffer"] == winner["buffer"] and entries[0]["block"] == winner["block"]


def test_small_data_caps_the_batch_and_says_so(tmp_path):
    """pbmc68k_reduced's 700 cells: batches of 4,096 are measured as batches of 70 (a tenth),
    with a warning; the recommended buffer holds as many batches of 4,096."""
    from .test_corpus import corpus

    pbmc = corpus("scanpy-pbmc68k_reduced.h5ad")
    workload = load_workload("training").model_copy(
        update={"patterns": [load_workload("training").patterns[0].model_copy(
            update={"label": "bulk_labels"})]}
    )  # fmt: skip
    result = run_bench(
        pbmc, workload, workdir=tmp_path, layouts=["anndata-default"], rounds=2,
        readers=("annlayout",),
    )  # fmt: skip
    (warning,) = [w for w in result.warnings if w.startswith("training (4096)")]
    assert "measured with batches of 70" in warning and "700 cells measured" in warning
    (r,) = result.candidates[0].results
    assert r.settings["batch_size"] == 70 and r.rows == 2 * 700
    # an epoch is one batch of all 700 cells: requests and bytes per batch of 70 scaled x10
    assert r.ops_per_epoch == 1 and r.scale == pytest.approx(10.0)
    assert result.scaled["training (4096)"][0] == pytest.approx(10.0)
    assert 0 < r.mixing_ratio <= 1.05
    (entry,) = result.loader()
    held = entry["batches_per_buffer"]
    assert entry["batch_size"] == 4096
    assert entry["buffer"] * entry["block_rows"] >= held * 4096


def test_the_source_file_concat_recorded_is_the_default_label(tmp_path, stores):
    """Without label:, a store from concat --shuffle is measured on its input files."""
    import annlayout

    parts = []
    for number in range(2):
        part = _adata(np.arange(number * 1000, (number + 1) * 1000))
        parts.append(tmp_path / f"part{number}.h5ad")
        part.write_h5ad(parts[-1])
    annlayout.concat("anndata-default", parts, tmp_path / "both.zarr", shuffle=0)
    result = run_bench(
        tmp_path / "both.zarr", _training(batch_size=100), workdir=tmp_path / "w",
        layouts=[str(stores["rows25"])], rounds=2, sample=None, readers=("annlayout",),
    )  # fmt: skip
    (r,) = result.candidates[0].results
    assert r.label == "input file (recorded by concat)"
    assert r.mixing_uniform == pytest.approx(1.0, abs=0.02)  # two files, half each: 1 bit
    assert r.mixing_ratio > 0.95  # concat shuffled them
    unlabelled = _training(batch_size=100, min_mixing=0.5)
    with pytest.raises(BenchError, match=r"min_mixing needs a label .* give label: an obs"):
        run_bench(
            stores["ordered"], unlabelled, workdir=tmp_path / "u", sample=None,
            layouts=[str(stores["rows25"])], readers=("annlayout",),
        )  # fmt: skip
    with pytest.raises(BenchError, match="label 'nope' is not an obs column of"):
        run_bench(
            stores["ordered"], _training(label="nope"), workdir=tmp_path / "n", sample=None,
            layouts=[str(stores["rows25"])], readers=("annlayout",),
        )  # fmt: skip


def test_a_loader_returning_wrong_rows_cannot_win(tmp_path, stores, monkeypatch):
    real = bench_readers.open_loader

    def lying(kind, source, *args):
        epoch = real(kind, source, *args)
        if "rows2000" not in str(source):
            return epoch
        return lambda number: ((index, x * 2) for index, x in epoch(number))

    monkeypatch.setattr("annlayout.bench.training.open_loader", lying)
    with pytest.raises(BenchError, match=r"rows2000 \(annlayout loader\) returned rows"):
        run_bench(
            stores["shuffled"], _training(batch_size=100), workdir=tmp_path, sample=None,
            layouts=[str(stores["rows25"]), str(stores["rows2000"])], rounds=2,
            readers=("annlayout",),
        )  # fmt: skip


def test_annbatch_is_listed_as_skipped_when_missing(tmp_path, stores, monkeypatch):
    import annlayout.base.optional

    found = annlayout.base.optional.find_spec
    monkeypatch.setattr(
        annlayout.base.optional,
        "find_spec",
        lambda name: None if name == "annbatch" else found(name),
    )
    result = run_bench(
        stores["shuffled"], _training(batch_size=100), workdir=tmp_path / "w", sample=None,
        layouts=[str(stores["rows25"])], rounds=2,
    )  # fmt: skip
    reason = "annbatch's Loader needs annbatch (Python 3.12 or later): pip install annbatch"
    assert result.skipped_readers == {"annbatch": reason}
    assert {r.reader for r in result.candidates[0].results} == {"annlayout"}
    paths = write_reports(result, tmp_path / "out")
    assert f"Skipped reader: annbatch, not measured ({reason})." in paths["markdown"].read_text()
    with pytest.raises(BenchError, match=r"--reader annbatch: annbatch's Loader needs annbatch"):
        run_bench(stores["shuffled"], _training(), workdir=tmp_path, reader="annbatch")
    # a workload without a training pattern has nothing for annbatch: not a skipped reader
    rows = Workload.model_validate(
        {"workload": 1, "name": "r", "patterns": [{"kind": "random-rows", "batch_size": 16}]}
    )
    plain = run_bench(
        stores["shuffled"], rows, workdir=tmp_path / "r", layouts=[str(stores["rows25"])],
        rounds=2, readers=("annlayout", "annbatch"),
    )  # fmt: skip
    assert plain.skipped_readers == {}


def test_annbatch_reads_only_training_patterns(tmp_path, stores):
    with pytest.raises(BenchError, match=r"--reader annbatch: it does not read random rows"):
        run_bench(
            stores["shuffled"], load_workload("ml-minibatch"), workdir=tmp_path,
            reader="annbatch",
        )  # fmt: skip
    assert bench_readers.loader_refusal("annlayout", tmp_path / "x.h5ad") is None
    if "annbatch" not in bench_readers.not_installed():
        assert bench_readers.loader_refusal("annbatch", tmp_path / "x.h5ad") == (
            "annbatch's Loader reads zarr stores only, not h5ad"
        )


def test_training_through_annbatch(tmp_path, stores):
    """annbatch's Loader replays the same settings as annlayout's loader (the 3.12 stack);
    the recommendation can be asked for it."""
    pytest.importorskip("annbatch")
    result = run_bench(
        stores["ordered"], _training(batch_size=100, buffer=1, label="group"),
        workdir=tmp_path, layouts=[str(stores["rows25"]), str(stores["rows2000"])], rounds=2,
        sample=None, reader="annbatch",
    )  # fmt: skip
    assert result.skipped_readers == {} and result.reader == "annbatch"
    for candidate in result.candidates:
        by_reader = {r.reader: r for r in candidate.results}
        assert set(by_reader) == {"annlayout", "annbatch"}
        ours, theirs = by_reader["annlayout"], by_reader["annbatch"]
        assert theirs.rows == 2 * N_OBS and theirs.throughput > 0
        assert theirs.settings == ours.settings
        assert theirs.mixing_ratio is not None
    small = next(c for c in result.candidates if c.name == "rows25")
    whole = next(c for c in result.candidates if c.name == "rows2000")
    # a buffer of one default block (500 rows of 25-row chunks) on the ordered store: annbatch
    # mixes little there too; one 2,000-row chunk holds every group
    assert small.results[-1].mixing_ratio < 0.6 < whole.results[-1].mixing_ratio
    (entry,) = result.loader()
    assert entry["reader"] == "annbatch"
    paths = write_reports(result, tmp_path / "out")
    assert "Loader for training (100): annbatch.Loader(batch_size=100, chunk_size=" in (
        paths["recommended"].read_text()
    )
