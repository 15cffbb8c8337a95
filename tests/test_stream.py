"""Streaming apply and verify on real stores: every input kind, dask, interruption, errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from anndata.tests.helpers import assert_equal

import annlayout
from annlayout.apply import ApplyError
from annlayout.base.errors import NotAnnDataError
from annlayout.planning.survey import survey_store
from annlayout.storage.commit import temporary_sibling

from .conftest import assert_matches_plan, read_any
from .test_cli import tree_digest

# small chunks and shards, so even test data is copied in many blocks
BLOCKY = {
    "annlayout": 1,
    "name": "blocky",
    "target": {"format": "zarr", "zarr_format": 3},
    "defaults": {"chunks": {"elements": 500}, "shards": {"chunks": 4}, "index_dtype": "minimal"},
}


def blocky(**target) -> annlayout.Layout:
    data = {**BLOCKY, "target": {**BLOCKY["target"], **target}}
    if target.get("format") == "h5ad" or target.get("zarr_format") == 2:
        data["defaults"] = {**data["defaults"], "shards": "none"}
    return annlayout.Layout.model_validate(data)


def make_input(path: Path, x_kind: str, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = sp.random(400, 150, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    X = {"csr": X, "csc": X.tocsc(), "dense": X.toarray()}[x_kind]
    adata = ad.AnnData(
        X=X,
        obs={"group": rng.choice(["a", "b"], 400), "score": rng.random(400)},
        obsm={"X_pca": rng.standard_normal((400, 6)).astype(np.float32)},
        layers={"counts": sp.random(400, 150, density=0.1, format="csr", random_state=rng)},
        uns={"note": "hello", "n": 3},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.suffix == ".h5ad":
            adata.write_h5ad(path)
        else:
            with ad.settings.override(zarr_write_format=2 if path.stem.endswith("2") else 3):
                adata.write_zarr(path)
    return adata


KINDS = [(fmt, x) for fmt in ("in.h5ad", "in2.zarr", "in3.zarr") for x in ("csr", "csc", "dense")]


@pytest.mark.parametrize(("name", "x_kind"), KINDS)
def test_every_input_kind_streams_to_an_equal_store(tmp_path, name, x_kind):
    source = tmp_path / name
    adata = make_input(source, x_kind)
    before = tree_digest(source)
    out = tmp_path / "out.zarr"
    result = annlayout.apply(blocky(), source, out, memory="64KiB", small_element=0)
    assert tree_digest(source) == before
    # dataframes go whole through anndata (their dtypes are anndata's to decide); the
    # matrices stream, in many blocks each
    assert set(result.streamed) == {"X", "layers/counts", "obsm/X_pca"}
    assert result.n_blocks >= 20 and result.verified
    assert_equal(adata, read_any(out))
    assert_matches_plan(result.plans, out)
    assert annlayout.verify(source, out) == []


@pytest.mark.parametrize("target", [{"format": "h5ad"}, {"zarr_format": 2}])
def test_streams_into_h5ad_and_zarr_v2(tmp_path, target):
    source = tmp_path / "in3.zarr"
    adata = make_input(source, "csr")
    out = tmp_path / ("out.h5ad" if target.get("format") == "h5ad" else "out.zarr")
    result = annlayout.apply(blocky(**target), source, out, memory="64KiB", small_element=0)
    assert result.verified
    assert_equal(adata, read_any(out))
    assert_matches_plan(result.plans, out)


def test_threads_and_local_cluster_give_the_single_process_result(tmp_path):
    distributed = pytest.importorskip("distributed")
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    single = tmp_path / "single.zarr"
    annlayout.apply(blocky(), source, single, memory="64KiB", small_element=0)
    threads = tmp_path / "threads.zarr"
    annlayout.apply(blocky(), source, threads, memory="128KiB", small_element=0, workers=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        cluster_out = tmp_path / "cluster.zarr"
        result = annlayout.apply(
            blocky(),
            source,
            cluster_out,
            memory="64KiB",
            small_element=0,
            scheduler=cluster.scheduler_address,
        )
    assert result.verified
    for other in (threads, cluster_out):
        assert annlayout.verify(single, other) == []
        assert_equal(read_any(single), read_any(other))


def test_cluster_runs_transposes_as_tasks_and_gives_the_single_process_result(tmp_path):
    """cell-browser keeps a CSC copy of X: its transpose is a task like the blocks, opened by
    location on the workers, and the output equals the serial one."""
    distributed = pytest.importorskip("distributed")
    from annlayout.execute import tasks as execute

    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    kw = {"memory": "64MiB", "small_element": 0}
    single = tmp_path / "single.zarr"
    annlayout.apply("cell-browser", source, single, **kw)
    ran = []
    real = execute.TransposeTask.run

    def run(task, advance=None):
        ran.append(task.transpose.group)
        return real(task, advance)

    threads = tmp_path / "threads.zarr"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(execute.TransposeTask, "run", run)
        annlayout.apply("cell-browser", source, threads, workers=2, **kw)
    assert ran == ["X/csc"]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        cluster_out = tmp_path / "cluster.zarr"
        result = annlayout.apply(
            "cell-browser", source, cluster_out, scheduler=cluster.scheduler_address, **kw
        )
    assert result.verified
    for other in (threads, cluster_out):
        assert annlayout.verify(single, other) == []
        for name in ("data", "indices", "indptr"):
            assert np.array_equal(
                zarr.open_group(single)[f"X/csc/{name}"][...],
                zarr.open_group(other)[f"X/csc/{name}"][...],
            )


def test_shard_larger_than_the_budget_is_refused_before_writing(tmp_path, monkeypatch):
    from annlayout.apply import stream

    def prepare(*args, **kwargs):
        raise AssertionError("the output was being written")

    monkeypatch.setattr(stream.Rewriter, "prepare", prepare)
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    with pytest.raises(ApplyError, match=r"^X/data: one shard is .* raise --memory"):
        annlayout.apply(blocky(), source, tmp_path / "o.zarr", memory="8KiB", small_element=0)
    # blocks of 2,000 elements fit 300 KB; writing whole-array shards of a CSC X does not
    whole_x = {"match": {"path": "X"}, "orientations": ["csc"], "chunks": {"elements": 20_000}}
    layout = annlayout.Layout.model_validate({**BLOCKY, "rules": [whole_x]})
    with pytest.raises(ApplyError, match=r"^X: building the csc orientation needs more"):
        annlayout.apply(layout, source, tmp_path / "o.zarr", memory="300KB", small_element=0)
    assert list(tmp_path.iterdir()) == [source]


def test_missing_chunk_in_input_is_named(tmp_path):
    source = tmp_path / "in2.zarr"
    make_input(source, "csr")
    (source / "X" / "data" / "0").unlink()
    with pytest.raises(ApplyError, match=r"X/data: 1 of \d+ chunks are missing"):
        annlayout.apply("analysis", source, tmp_path / "o.zarr", small_element=0)
    assert not (tmp_path / "o.zarr").exists()


def test_corrupt_chunk_in_input_is_named(tmp_path):
    source = tmp_path / "in2.zarr"
    make_input(source, "csr")
    (source / "X" / "data" / "0").write_bytes(b"not blosc at all")
    with pytest.raises(ApplyError, match=r"^X/data: cannot read the input"):
        annlayout.apply("analysis", source, tmp_path / "o.zarr", small_element=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in2.zarr"]


def test_unknown_encoding_is_named(tmp_path):
    source = tmp_path / "in3.zarr"
    make_input(source, "csr")
    zarr.open_group(source)["uns"].create_group("weird").attrs.update(
        {"encoding-type": "future-thing", "encoding-version": "9.9.9"}
    )
    zarr.consolidate_metadata(source)
    with pytest.raises(ApplyError, match=r"^uns/weird: cannot read the input"):
        annlayout.apply("analysis", source, tmp_path / "o.zarr")


def test_not_enough_disk_is_refused_before_starting(tmp_path, monkeypatch):
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(
        ApplyError, match=r"not enough free disk: the output needs about .*, 0.0 MiB is free"
    ):
        annlayout.apply("analysis", source, tmp_path / "o.zarr")
    assert list(tmp_path.iterdir()) == [source]


def test_missing_and_non_anndata_inputs(tmp_path):
    with pytest.raises(NotAnnDataError, match="no such file"):
        annlayout.apply("analysis", tmp_path / "nope.h5ad", tmp_path / "o.zarr")
    group = zarr.open_group(tmp_path / "plain.zarr", mode="w")
    group.create_array("x", shape=(2,), dtype="i4")
    with pytest.raises(NotAnnDataError, match="not an AnnData store"):
        annlayout.apply("analysis", tmp_path / "plain.zarr", tmp_path / "o.zarr")


# --------------------------------------------------------------------------- interruption


def _slow_input(tmp_path: Path) -> Path:
    """Big enough that copying it with zarr-python into tiny unsharded chunks takes seconds."""
    source = tmp_path / "in.h5ad"
    X = sp.random(20_000, 2_000, density=0.05, format="csr", dtype=np.float32, random_state=0)
    ad.AnnData(X=X).write_h5ad(source)
    layout = tmp_path / "slow.yaml"
    layout.write_text(
        "annlayout: 1\nname: slow\ntarget: {zarr_format: 2}\n"
        "defaults: {chunks: {elements: 2000}, shards: none, codecs: [{name: gzip, level: 9}]}\n"
    )
    return source


def _start_apply(tmp_path: Path, source: Path, out: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("annlayout")
    return subprocess.Popen(
        [exe, "apply", tmp_path / "slow.yaml", source, out, "--overwrite",
         "--codec-pipeline", "zarr", "--whole-below", "0", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for_copy(out: Path, process: subprocess.Popen) -> None:
    data = temporary_sibling(out) / "X" / "data"
    deadline = time.monotonic() + 60
    while not (data.is_dir() and len(os.listdir(data)) > 5):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_interrupted_apply_leaves_the_earlier_store_and_a_rerun_succeeds(tmp_path, how):
    source = _slow_input(tmp_path)
    before = tree_digest(source)
    out = tmp_path / "out.zarr"
    annlayout.apply("analysis", source, out)  # a complete earlier store at the target path
    earlier = tree_digest(out)

    process = _start_apply(tmp_path, source, out)
    _wait_for_copy(out, process)
    process.send_signal(how)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "Traceback" not in stderr
    assert tree_digest(out) == earlier  # the earlier store, untouched
    assert tree_digest(source) == before
    if how != signal.SIGKILL:  # nothing left but the checkpoint the message names
        kept = [".out.zarr.annlayout-resume", ".out.zarr.annlayout-tmp"]
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            *kept,
            "in.h5ad",
            "out.zarr",
            "slow.yaml",
        ]
        assert f"kept in {tmp_path / kept[1]} and {tmp_path / kept[0]} (" in stderr
        assert "--whole-below 0 --quiet --resume continues from it" in stderr

    rerun = subprocess.run(
        [Path(sys.executable).with_name("annlayout"), "apply", "ml-minibatch", source, out, "--overwrite"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert f"note: removed {tmp_path / '.out.zarr.annlayout-tmp'} (" in rerun.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad", "out.zarr", "slow.yaml"]
    assert survey_store(out).provenance["layout"] == "ml-minibatch"


def _kill_after_tasks(tmp_path: Path, command: list, tasks: int) -> None:
    """Start ``command`` and SIGKILL it once its journal lists ``tasks`` completed tasks."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = tmp_path / ".out.zarr.annlayout-resume" / "done.log"
    deadline = time.monotonic() + 60
    while not (journal.exists() and journal.read_text().count("\n") >= tasks):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)


def test_a_killed_apply_resumes_from_the_blocks_it_completed(tmp_path):
    source = _slow_input(tmp_path)
    out = tmp_path / "out.zarr"
    options = {"codec_pipeline_name": "zarr", "small_element": 0, "memory": "8MiB"}
    command = [Path(sys.executable).with_name("annlayout"), "apply", tmp_path / "slow.yaml",
               source, out, "--codec-pipeline", "zarr", "--whole-below", "0", "--memory",
               "8MiB", "--quiet"]  # fmt: skip
    _kill_after_tasks(tmp_path, command, 3)
    assert not out.exists()
    resumed = annlayout.apply(tmp_path / "slow.yaml", source, out, resume=True, **options)
    assert resumed.verified and resumed.resumed_tasks >= 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad", "out.zarr", "slow.yaml"]
    clean = tmp_path / "clean.zarr"
    annlayout.apply(tmp_path / "slow.yaml", source, clean, **options)
    assert annlayout.verify(clean, out) == []
    # other options than the killed run's: --resume starts clean
    _kill_after_tasks(tmp_path, [*command, "--overwrite"], 2)
    other = annlayout.apply(
        tmp_path / "slow.yaml", source, out, resume=True, overwrite=True,
        **{**options, "memory": "16MiB"},
    )  # fmt: skip
    assert other.verified and other.resumed_tasks == 0
    assert any(n.startswith("--resume: ") and "started clean" in n for n in other.notes)
    assert annlayout.verify(clean, out) == []
    from click.testing import CliRunner

    from annlayout.cli import main

    refused = CliRunner().invoke(main, ["apply", "h5ad-gzip", str(source),
                                        str(tmp_path / "o.h5ad"), "--resume"])  # fmt: skip
    assert refused.exit_code == 1 and "local zarr outputs only" in refused.stderr


# --------------------------------------------------------------------------- verify


@pytest.fixture
def pair(tmp_path):
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    out = tmp_path / "out.zarr"
    annlayout.apply("ml-minibatch", source, out)
    return source, out


def test_verify_catches_a_changed_value(pair):
    source, out = pair
    data = zarr.open_array(out / "X" / "data", mode="r+")
    data[17] = data[17] + 1
    (line,) = annlayout.verify(source, out)
    assert line == "X/data: 1 values differ (first at index 17)"


def test_verify_compares_blocks_in_slices(monkeypatch):
    """A block is compared a slice at a time: its differences are all counted, the first is
    found in whichever slice holds it, NaNs are equal, and the step is sized by either side."""
    from annlayout.verify import compare as verify

    monkeypatch.setattr(verify, "COMPARE_VALUES", 6)  # 3 rows of 2 per slice
    a = np.arange(40, dtype=np.float32).reshape(20, 2)
    a[1, 0] = np.nan
    b = a.copy()
    b[[7, 9, 13], 1] += 1  # one block of 16 rows (8 bytes each), three of its slices
    assert verify._compare_blocks(a, b, 128, check_dtype=True) == (
        "3 values differ (first at index 7)"
    )
    b[19, 0] += 1  # the second block is never read: the first already differs
    assert verify._compare_blocks(a, b, 128, check_dtype=True).startswith("3 values")
    assert verify._compare_blocks(a, a.copy(), 128, check_dtype=True) is None
    indices = np.arange(20, dtype=np.uint16)
    wider = indices.astype(np.int64)
    wider[[3, 5]] = 99  # 16 bytes per side: blocks of 2 rows of int64, not 8 of uint16
    assert verify._compare_blocks(indices, wider, 16, check_dtype=False) == (
        "1 values differ (first at index 3)"
    )


def test_verify_catches_a_missing_element(pair):
    source, out = pair
    shutil.rmtree(out / "obsm" / "X_pca")
    (out / "zarr.json").write_text((out / "zarr.json").read_text())  # consolidated copy too
    zarr.consolidate_metadata(out)
    assert f"obsm/X_pca: missing from {out}" in annlayout.verify(source, out)


def test_verify_catches_a_changed_dtype(pair):
    source, out = pair
    group = zarr.open_group(out, mode="r+", use_consolidated=False)
    values = group["obs/score"][...]
    del group["obs/score"]
    group.create_array("obs/score", data=values.astype(np.float32)).attrs.update(
        {"encoding-type": "array", "encoding-version": "0.2.0"}
    )
    zarr.consolidate_metadata(out)
    assert annlayout.verify(source, out) == ["obs/score: dtype float64 became float32"]


def test_verify_cli_exit_codes(pair):
    from click.testing import CliRunner

    from annlayout.cli import main

    source, out = pair
    assert CliRunner().invoke(main, ["verify", str(source), str(out)]).exit_code == 0
    zarr.open_array(out / "X" / "indices", mode="r+")[0] = 3
    result = CliRunner().invoke(main, ["verify", str(source), str(out)])
    assert result.exit_code == 1 and "X/indices" in result.output


def test_ctrl_c_while_apply_verifies_stops_it_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    """apply defers SIGINT while it writes; verifying (minutes on a large store) checks it
    between elements and blocks, where a new-user trial saw it ignored: the run went on and
    put the output in place."""
    from annlayout.storage.commit import Interrupted
    from annlayout.verify import compare

    source = tmp_path / "in.h5ad"
    X = sp.random(2_000, 300, density=0.05, format="csr", dtype=np.float32, random_state=0)
    ad.AnnData(X=X).write_h5ad(source)
    real = compare.compare_element

    def signalled(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # recorded by apply's handler, not raised here
        return real(*args, **kwargs)

    monkeypatch.setattr(compare, "compare_element", signalled)
    out = tmp_path / "out.zarr"
    with pytest.raises(Interrupted) as stopped:
        annlayout.apply("ml-minibatch", source, out, small_element=0)
    assert stopped.value.signum == signal.SIGINT and not out.exists()
    assert stopped.value.kept == (temporary_sibling(out), tmp_path / ".out.zarr.annlayout-resume")
    monkeypatch.undo()
    resumed = annlayout.apply("ml-minibatch", source, out, small_element=0, resume=True)
    assert resumed.verified and resumed.resumed_tasks > 0
