"""annlayout concat against anndata.concat of the inputs read into memory: mixed formats,
differing genes and gene orders, differing categories, repeating obs names, layers, obsm."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import annlayout
from annlayout import concat
from annlayout.cli import main
from annlayout.combine.concat import ConcatError
from annlayout.generate.synthetic import make_part


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Three inputs as users have them: two h5ad, one zarr; each with a counts layer."""
    root = tmp_path_factory.mktemp("collection")
    paths, adatas = [], []
    for i in range(3):
        adata = make_part(i, 150 + 40 * i, 80, nnz_per_cell=15, n_pcs=5, seed=11)
        adata.layers["counts"] = adata.X.copy()
        path = root / (f"part-{i}.zarr" if i == 1 else f"part-{i}.h5ad")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata.write_zarr(path) if i == 1 else adata.write_h5ad(path)
        paths.append(path)
        adatas.append(ad.read_zarr(path) if i == 1 else ad.read_h5ad(path))
    return paths, adatas


def _assert_same(got: ad.AnnData, expected: ad.AnnData) -> None:
    assert list(got.obs_names) == list(expected.obs_names)
    assert list(got.var_names) == list(expected.var_names)
    pd.testing.assert_frame_equal(got.obs, expected.obs)
    pd.testing.assert_frame_equal(got.var, expected.var)
    assert (sp.csr_matrix(got.X) != sp.csr_matrix(expected.X)).nnz == 0
    assert set(got.layers) == set(expected.layers)
    for key in expected.layers:
        assert (sp.csr_matrix(got.layers[key]) != sp.csr_matrix(expected.layers[key])).nnz == 0
    assert set(got.obsm) == set(expected.obsm)
    for key in expected.obsm:
        np.testing.assert_array_equal(np.asarray(got.obsm[key]), np.asarray(expected.obsm[key]))


@pytest.mark.parametrize("join", ["inner", "outer"])
def test_concat_equals_anndata_concat(tmp_path, collection, join):
    paths, adatas = collection
    out = tmp_path / "combined.zarr"
    options = {"join": join, "label": "source", "keys": ["a", "b", "c"], "index_unique": "-"}
    result = concat("ml-minibatch", paths, out, merge="same", memory="64KiB", **options)
    assert result.verified
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ad.concat(adatas, merge="same", uns_merge="same", **options)
    _assert_same(ad.read_zarr(out), expected)


def test_concat_cli_and_bad_inputs(tmp_path, collection):
    paths, adatas = collection
    out = tmp_path / "cli.zarr"
    done = CliRunner().invoke(main, ["concat", "analysis", *map(str, paths), str(out), "--join",
                                     "outer", "--index-unique", "-"])  # fmt: skip
    assert done.exit_code == 0, done.output + done.stderr
    assert ad.read_zarr(out).n_obs == sum(a.n_obs for a in adatas)
    not_anndata = tmp_path / "notes.txt"
    not_anndata.write_text("hello")
    bad = CliRunner().invoke(main, ["concat", "analysis", str(paths[0]), str(not_anndata),
                                    str(tmp_path / "never.zarr")])  # fmt: skip
    assert bad.exit_code == 1 and "notes.txt" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "never.zarr").exists()
    keys = CliRunner().invoke(main, ["concat", "analysis", *map(str, paths), str(tmp_path / "k.zarr"),
                                     "--keys", "a,b"])  # fmt: skip
    assert keys.exit_code == 1 and "--keys" in keys.stderr


def _corpus_readable():
    from .test_corpus import CORPUS, READABLE

    return [CORPUS / entry["path"] for entry in READABLE]


# every other file combined by dask tasks (--workers 2), so both paths meet every form
CORPUS_RUNS = [(path, 1 + number % 2) for number, path in enumerate(_corpus_readable())]


@pytest.mark.parametrize(
    ("path", "workers"), CORPUS_RUNS, ids=[f"{p.name}-workers{w}" for p, w in CORPUS_RUNS]
)
def test_concat_of_corpus_files_equals_anndata_concat(tmp_path, path, workers):
    """Every corpus file combined with itself, as anndata.concat combines its read."""
    from .test_corpus import assert_same, read_any

    adata = read_any(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = ad.concat([adata, adata], index_unique="-", merge="same", uns_merge="same")
        except Exception as err:  # anndata cannot either: ours must say so in one line
            pytest.skip(f"anndata.concat refuses it too: {err}")
    out = tmp_path / "twice.zarr"
    concat("analysis", [path, path], out, index_unique="-", merge="same", workers=workers)
    assert_same(read_any(out), expected)


def test_an_input_with_a_gene_twice_is_named(tmp_path, collection):
    paths, adatas = collection
    twice = adatas[0].copy()
    twice.var_names = [twice.var_names[0], *twice.var_names[:-1]]
    bad = tmp_path / "twice.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twice.write_h5ad(bad)
    out = tmp_path / "never.zarr"
    result = CliRunner().invoke(main, ["concat", "analysis", str(paths[1]), str(bad), str(out)])
    assert result.exit_code == 1 and "twice.h5ad" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def _expected(adatas, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ad.concat(adatas, merge="same", uns_merge="same", **options)


def test_shuffle_equals_anndata_concat_permuted_by_the_recorded_order(tmp_path, collection):
    """A budget of 64 KiB makes dozens of buckets: rows cross buckets in every block."""
    paths, adatas = collection
    options = {"label": "source", "keys": ["a", "b", "c"], "index_unique": "-"}
    first = concat("ml-minibatch", paths, tmp_path / "a.zarr", shuffle=7, memory="64KiB",
                   merge="same", **options)  # fmt: skip
    got = ad.read_zarr(tmp_path / "a.zarr")
    record = got.uns.pop("annlayout_order")
    order = np.asarray(record["source_row"])
    assert record["method"] == "shuffle" and record["seed"] == 7
    assert list(record["input_n_obs"]) == [a.n_obs for a in adatas]
    assert sorted(order) == list(range(got.n_obs)) and not np.array_equal(order, np.sort(order))
    _assert_same(got, _expected(adatas, **options)[order].copy())
    observed, uniform = first.mixing
    assert abs(observed - uniform) < 0.1  # three inputs: about 1.5 bits in both
    again = concat("ml-minibatch", paths, tmp_path / "b.zarr", shuffle=7, memory="1MiB",
                   merge="same", **options)  # fmt: skip
    assert again.verified
    same = ad.read_zarr(tmp_path / "b.zarr")
    np.testing.assert_array_equal(same.uns["annlayout_order"]["source_row"], order)
    other = concat("ml-minibatch", paths, tmp_path / "c.zarr", shuffle=8, **options)
    assert other.mixing is not None
    assert not np.array_equal(
        ad.read_zarr(tmp_path / "c.zarr").uns["annlayout_order"]["source_row"], order
    )


def test_groupby_orders_cells_by_a_column_stably(tmp_path, collection):
    paths, adatas = collection
    concat("cell-browser", paths, tmp_path / "g.zarr", groupby="cell_type", index_unique="-",
           join="outer", memory="64KiB")  # fmt: skip
    got = ad.read_zarr(tmp_path / "g.zarr")
    record = got.uns.pop("annlayout_order")
    assert record["method"] == "groupby" and record["column"] == "cell_type"
    expected = _expected(adatas, index_unique="-", join="outer")
    codes = expected.obs["cell_type"].cat.codes.to_numpy()
    order = np.argsort(codes, kind="stable")
    np.testing.assert_array_equal(record["source_row"], order)
    _assert_same(got, expected[order].copy())


def _h5ad_parts(tmp_path, sizes, *, seed, change):
    """Generated parts of ``sizes`` cells x 40 genes, each changed by ``change(i, adata)``,
    written as h5ad; their paths and the files read back."""
    paths, adatas = [], []
    for i, n_obs in enumerate(sizes):
        adata = make_part(i, n_obs, 40, nnz_per_cell=8, n_pcs=3, seed=seed)
        change(i, adata)
        path = tmp_path / f"p{i}.h5ad"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata.write_h5ad(path)
        paths.append(path)
        adatas.append(ad.read_h5ad(path))
    return paths, adatas


def test_a_dense_input_among_sparse_ones_is_stacked_as_csr(tmp_path):
    """One input with a dense X, read ahead on the threads with the sparse ones."""

    def densify_the_second(i, adata):
        if i == 1:
            adata.X = adata.X.toarray()

    paths, adatas = _h5ad_parts(tmp_path, [70, 90, 110], seed=7, change=densify_the_second)
    concat("ml-minibatch", paths, tmp_path / "m.zarr", index_unique="-", memory="16KiB")
    got = ad.read_zarr(tmp_path / "m.zarr")
    expected = _expected(adatas, index_unique="-")
    assert sp.issparse(got.X)
    assert (sp.csr_matrix(got.X) != sp.csr_matrix(expected.X)).nnz == 0
    pd.testing.assert_frame_equal(got.obs, expected.obs)


def test_shuffle_moves_dense_layers_raw_and_obsm_with_the_cells(tmp_path):
    def add_dense_layer_and_raw(i, adata):
        adata.layers["dense"] = adata.X.toarray()
        adata.raw = adata

    paths, adatas = _h5ad_parts(tmp_path, [60, 90], seed=5, change=add_dense_layer_and_raw)
    concat(
        "analysis",
        paths,
        tmp_path / "s.zarr",
        shuffle=1,
        index_unique="-",
        merge="same",
        memory="16KiB",
    )
    got = ad.read_zarr(tmp_path / "s.zarr")
    order = np.asarray(got.uns.pop("annlayout_order")["source_row"])
    expected = _expected(adatas, index_unique="-")[order].copy()
    _assert_same(got, expected)
    assert (sp.csr_matrix(got.raw.X) != sp.csr_matrix(expected.raw.X)).nnz == 0
    assert list(got.raw.var_names) == list(expected.raw.var_names)


def test_order_options_refused_in_one_line(tmp_path, collection):
    paths, _ = collection
    out = tmp_path / "never.zarr"
    both = CliRunner().invoke(main, ["concat", "analysis", *map(str, paths), str(out),
                                     "--shuffle", "1", "--groupby", "cell_type"])  # fmt: skip
    assert both.exit_code == 1 and "--groupby" in both.stderr
    unknown = CliRunner().invoke(main, ["concat", "analysis", *map(str, paths), str(out),
                                        "--groupby", "tissue"])  # fmt: skip
    assert unknown.exit_code == 1 and "'tissue'" in unknown.stderr
    for result in (both, unknown):
        assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_inputs_with_a_csc_copy_or_a_csc_matrix(tmp_path, collection):
    """An annlayout store with a second orientation and an h5ad whose X is CSC."""
    paths, adatas = collection
    with_copy = tmp_path / "with-copy.zarr"
    annlayout.apply("cell-browser", paths[0], with_copy)
    as_csc = tmp_path / "csc.h5ad"
    csc = adatas[2].copy()
    csc.X = sp.csc_matrix(csc.X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        csc.write_h5ad(as_csc)
    out = tmp_path / "mixed.zarr"
    concat("cell-browser", [with_copy, paths[1], as_csc], out, index_unique="-", merge="same",
           memory="64KiB", shuffle=3)  # fmt: skip
    got = ad.read_zarr(out)
    order = np.asarray(got.uns.pop("annlayout_order")["source_row"])
    inputs = [ad.read_zarr(with_copy), adatas[1], ad.read_h5ad(as_csc)]
    _assert_same(got, _expected(inputs, index_unique="-")[order].copy())
    assert sorted(annlayout.open(out).X._orientations) == ["csc", "csr"]


def test_mismatched_obsm_is_refused_in_one_line(tmp_path, collection):
    paths, adatas = collection
    narrow = adatas[0].copy()
    narrow.obsm["X_pca"] = narrow.obsm["X_pca"][:, :2]
    bad = tmp_path / "narrow.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        narrow.write_h5ad(bad)
    out = tmp_path / "never.zarr"
    result = CliRunner().invoke(main, ["concat", "analysis", str(bad), str(paths[1]), str(out)])
    assert result.exit_code == 1, result.output
    assert "obsm" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".never.zarr*"))


def test_concat_killed_leaves_nothing_and_a_rerun_succeeds(tmp_path):
    source = tmp_path / "in.h5ad"
    X = sp.random(20_000, 2_000, density=0.05, format="csr", dtype=np.float32, random_state=0)
    ad.AnnData(X=X).write_h5ad(source)
    before = source.read_bytes()
    out = tmp_path / "out.zarr"
    exe = Path(sys.executable).with_name("annlayout")
    command = [exe, "concat", "ml-minibatch", source, source, out, "--index-unique", "-",
               "--shuffle", "0", "--memory", "64MiB", "--quiet"]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    buckets = tmp_path / ".out.zarr.annlayout-concat" / "buckets" / "X"
    deadline = time.monotonic() + 60
    while not (buckets.is_dir() and len(os.listdir(buckets)) > 10):
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    assert not out.exists() and source.read_bytes() == before
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad", "out.zarr"]
    got = ad.read_zarr(out)
    order = np.asarray(got.uns["annlayout_order"]["source_row"])
    assert (sp.vstack([X, X]).tocsr()[order] != got.X).nnz == 0


def test_the_inputs_fingerprint_sees_a_change_inside_a_zarr_input(collection, tmp_path):
    """--resume continues only from the same inputs: a zarr input changed inside its
    directory (its top directory's size and time unchanged) is other inputs."""
    from annlayout.combine.concat import inputs_fingerprint

    paths, _ = collection
    store = tmp_path / "part.zarr"
    shutil.copytree(paths[1], store)
    before = inputs_fingerprint([paths[0], store], join="inner")
    assert inputs_fingerprint([paths[0], store], join="inner") == before
    chunk = next(p for p in sorted((store / "X").rglob("*")) if p.is_file() and "data" in str(p))
    top = store.stat().st_mtime_ns
    chunk.write_bytes(chunk.read_bytes()[::-1])  # same size, other values
    assert store.stat().st_mtime_ns == top
    assert inputs_fingerprint([paths[0], store], join="inner") != before


def test_what_cannot_fit_is_refused_before_the_inputs_are_combined(
    collection, tmp_path, monkeypatch
):
    """As apply refuses: the layout step is planned on the store the inputs will make, so a
    budget it cannot keep is refused before anything is combined or written (it was refused
    after combining, and left the combined inputs hidden beside the output)."""
    import annlayout.combine.concat as concatenate

    paths, _ = collection
    monkeypatch.setattr(concatenate, "WHOLE_BELOW", "1KiB")  # small elements streamed too

    def combined(*args, **kwargs):
        raise AssertionError("the inputs were combined")

    monkeypatch.setattr(concatenate, "_assemble", combined)
    result = CliRunner().invoke(
        main,
        [
            "concat",
            "archive",
            *map(str, paths),
            str(tmp_path / "out.zarr"),
            "--memory",
            "16KiB",
        ],
    )
    assert result.exit_code == 1, (result.output, result.exception)
    assert "more than --memory" in result.stderr and len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_concat_names_what_it_kept_and_a_rerun_removes_it(tmp_path):
    """SIGINT and SIGTERM leave nothing hidden but the checkpoint, named with the command
    that resumes from it; a run without --resume removes it and says so."""
    source = tmp_path / "in.h5ad"
    X = sp.random(20_000, 2_000, density=0.05, format="csr", dtype=np.float32, random_state=0)
    ad.AnnData(X=X).write_h5ad(source)
    out = tmp_path / "out.zarr"
    scratch = tmp_path / ".out.zarr.annlayout-concat"
    exe = Path(sys.executable).with_name("annlayout")
    command = [str(exe), "concat", "ml-minibatch", str(source), str(source), str(out),
               "--index-unique", "-", "--shuffle", "0", "--memory", "64MiB", "--quiet"]  # fmt: skip
    for signum in (signal.SIGINT, signal.SIGTERM):
        shutil.rmtree(scratch, ignore_errors=True)  # its buckets: the new run's, not the last's
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        buckets = scratch / "buckets" / "X"
        deadline = time.monotonic() + 60
        while not (buckets.is_dir() and len(os.listdir(buckets)) > 10):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        child.send_signal(signum)
        _, stderr = child.communicate(timeout=60)
        assert child.returncode == 128 + signum, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and str(scratch) in lines[0], stderr
        assert f"annlayout {' '.join(command[1:])} --resume continues from it" in lines[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == [scratch.name, "in.h5ad"]
    rerun = subprocess.run(command[:-1], capture_output=True, text=True)  # not --quiet
    assert rerun.returncode == 0, rerun.stderr
    assert f"removed {scratch}" in rerun.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad", "out.zarr"]


@pytest.mark.parametrize(
    "options",
    [{"index_unique": "-", "shuffle": 2}, {"join": "outer", "label": "batch", "index_unique": "-"}],
    ids=["shuffled", "stacked-outer"],
)
def test_concat_on_threads_and_a_local_cluster_equals_the_serial_result(
    tmp_path, collection, options, monkeypatch
):
    """Combining the inputs (and the shuffle) runs as scatter and gather tasks on dask; the
    store equals the serial one's, node for node, values and the recorded order included."""
    import annlayout.combine.assembly as assembly

    distributed = pytest.importorskip("distributed")
    paths, _ = collection
    options = {**options, "memory": "256KiB"}
    concat("cell-browser", paths, tmp_path / "serial.zarr", **options)
    # chunks of the combined arrays (written by the tasks as the driver made them) smaller
    # than a bucket's values and rows, so buckets share chunks and some cover none whole
    monkeypatch.setattr(assembly, "TASK_CHUNK", 37)
    ran: list[str] = []
    with monkeypatch.context() as counting:
        for task in (assembly.ScatterTask, assembly.GatherTask):
            counting.setattr(task, "run", _counted(task.run, ran))
        concat("cell-browser", paths, tmp_path / "threads.zarr", workers=2, **options)
    # X and the counts layer, each in blocks of about 40 rows of the 570: one scatter task
    # per thread reads its share of them, so a gather task reads a part of each of 2
    assert ran.count("ScatterTask") == 2 * 2 and ran.count("GatherTask") >= 2 * 14
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        result = concat("cell-browser", paths, tmp_path / "cluster.zarr",
                        scheduler=cluster.scheduler_address, **options)  # fmt: skip
    assert result.verified
    for other in ("threads.zarr", "cluster.zarr"):
        assert annlayout.verify(tmp_path / "serial.zarr", tmp_path / other) == []
        assert _tree(tmp_path / "serial.zarr") == _tree(tmp_path / other)


def _counted(run, calls):
    def counted(self, advance=None):
        calls.append(type(self).__name__)
        return run(self, advance)

    return counted


def _interrupted_at_bucket_5(run):
    """A gather task's ``run`` that stops the run at X's bucket 5 (as SIGTERM would), once
    the other thread has gathered a bucket."""
    from annlayout.storage.commit import Interrupted

    def interrupted(self, advance=None):
        if self.bucket == 5 and self.group.endswith("/X"):
            deadline = time.monotonic() + 30
            while not any(Path(self.pieces).parent.glob("*.npz")):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            raise Interrupted(signal.SIGTERM)
        return run(self, advance)

    return interrupted


def _recorded_run(run, done):
    """``run``, recording the files each task makes (a scatter task's directory, a gather
    task's pieces)."""

    def recorded(self, advance=None):
        done.append(getattr(self, "pieces", None) or self.directory)
        return run(self, advance)

    return recorded


def _tree(path: Path) -> dict[str, object]:
    """Every array's metadata and values and every group's attributes, by path."""
    import zarr

    found: dict[str, object] = {}
    root = zarr.open_group(path, mode="r")
    found[""] = {k: v for k, v in root.attrs.items() if k != "annlayout"}
    for name, node in root.members(max_depth=None):
        if isinstance(node, zarr.Array):
            values = np.asarray(node[...])
            data = values.tolist() if values.dtype.kind in "OTU" else values.tobytes()
            found[name] = (node.metadata.to_dict(), values.dtype.str, data)
        else:
            found[name] = dict(node.attrs)
    return found


def test_a_concat_on_tasks_interrupted_resumes_without_redoing_finished_tasks(
    tmp_path, collection, monkeypatch
):
    import annlayout.combine.assembly as assembly
    from annlayout.storage.commit import Interrupted

    paths, _ = collection
    options = {"index_unique": "-", "shuffle": 2, "memory": "256KiB", "workers": 2}
    out = tmp_path / "out.zarr"
    original = assembly.GatherTask.run
    monkeypatch.setattr(assembly.GatherTask, "run", _interrupted_at_bucket_5(original))
    with pytest.raises(Interrupted):
        concat("ml-minibatch", paths, out, **options)
    assert not out.exists()
    scratch = tmp_path / ".out.zarr.annlayout-concat" / "assembling" / "tasks"
    scattered = {str(p.parent) for p in scratch.glob("X/scatter/*/bounds.npy")}
    gathered = {str(p) for p in scratch.glob("X/gather/*.npz")}
    assert scattered and gathered  # X's scatter, and its buckets up to the interruption

    ran: list[str] = []
    for task in (assembly.ScatterTask, assembly.GatherTask):
        monkeypatch.setattr(task, "run", _recorded_run(original if task is assembly.GatherTask
                                                       else task.run, ran))  # fmt: skip
    concat("ml-minibatch", paths, out, resume=True, **options)
    assert ran and not set(ran) & (scattered | gathered)  # the rest only, never these again
    monkeypatch.undo()
    concat("ml-minibatch", paths, tmp_path / "clean.zarr", **options)
    assert annlayout.verify(tmp_path / "clean.zarr", out) == []
    assert _tree(tmp_path / "clean.zarr") == _tree(out)


def _killed_after_combining(source: Path, out: Path, *options: str) -> Path:
    """Run concat of ``source`` twice into ``out`` and SIGKILL it once the combined inputs
    are complete (while the layout is written); return the scratch directory."""
    exe = Path(sys.executable).with_name("annlayout")
    command = [exe, "concat", "ml-minibatch", source, source, out, "--index-unique", "-",
               "--memory", "64MiB", "--quiet", *options]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scratch = out.with_name(f".{out.name}.annlayout-concat")
    deadline = time.monotonic() + 60
    while not (scratch / "assembled.done").exists():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    assert not out.exists()
    return scratch


def test_resume_continues_from_the_combined_inputs_and_equals_a_clean_run(tmp_path):
    source = tmp_path / "in.h5ad"
    X = sp.random(20_000, 2_000, density=0.05, format="csr", dtype=np.float32, random_state=1)
    ad.AnnData(X=X).write_h5ad(source)
    out = tmp_path / "out.zarr"
    scratch = _killed_after_combining(source, out, "--shuffle", "4")
    said: list[str] = []
    concat("ml-minibatch", [source, source], out, resume=True, index_unique="-", shuffle=4,
           progress=lambda what, *_: said.append(what))  # fmt: skip
    assert "resuming from the combined inputs" in said and not scratch.exists()
    concat("ml-minibatch", [source, source], tmp_path / "clean.zarr", index_unique="-", shuffle=4)
    assert annlayout.verify(tmp_path / "clean.zarr", out) == []

    said.clear()  # other options: the kept inputs do not fit them, so they are made again
    again = tmp_path / "again.zarr"
    _killed_after_combining(source, again, "--shuffle", "4")
    concat("ml-minibatch", [source, source], again, resume=True, index_unique="-", shuffle=5,
           progress=lambda what, *_: said.append(what))  # fmt: skip
    assert "resuming from the combined inputs" not in said
    assert ad.read_zarr(again).uns["annlayout_order"]["seed"] == 5


def _recorded(scratch: Path, key: str) -> int:
    """How far the combining of X got: its checkpoint's ``scattered`` or ``rows``."""
    record = scratch / "assembling" / "X.json"
    return json.loads(record.read_text()).get(key, 0) if record.exists() else 0


@pytest.mark.parametrize(
    ("phase", "options"),
    [("shuffle's first pass", ["--shuffle", "3"]), ("shuffle's second pass", ["--shuffle", "3"]),
     ("stacking", [])],
)  # fmt: skip
def test_resume_continues_inside_the_combining_step(tmp_path, phase, options):
    """Killed while the inputs are combined (rows scattered to buckets, buckets drained, or
    rows stacked), a --resume run continues from the rows recorded and equals a clean run."""
    source = tmp_path / "in.h5ad"
    X = sp.random(20_000, 2_000, density=0.05, format="csr", dtype=np.float32, random_state=2)
    ad.AnnData(X=X).write_h5ad(source)
    out, scratch = tmp_path / "out.zarr", tmp_path / ".out.zarr.annlayout-concat"
    exe = Path(sys.executable).with_name("annlayout")
    command = [exe, "concat", "ml-minibatch", source, source, out, "--index-unique", "-",
               "--memory", "64MiB", "--quiet", *options]  # fmt: skip
    if phase == "shuffle's first pass":
        reached = lambda: _recorded(scratch, "scattered") > 5_000  # noqa: E731
    else:
        reached = lambda: _recorded(scratch, "rows") > 5_000  # noqa: E731
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not reached():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    assert not out.exists() and not (scratch / "assembled.done").exists()
    scattered, written = _recorded(scratch, "scattered"), _recorded(scratch, "rows")
    said: list[str] = []
    shuffle = {"shuffle": 3} if options else {}
    concat("ml-minibatch", [source, source], out, resume=True, index_unique="-", memory="64MiB",
           progress=lambda what, *_: said.append(what), **shuffle)  # fmt: skip
    if phase == "shuffle's first pass":
        assert 0 < scattered < 40_000 and written == 0
        assert f"resuming the shuffle of X at row {scattered:,}" in said
    else:
        assert 0 < written < 40_000
        assert f"resuming X at row {written:,}" in said
    assert not scratch.exists()
    clean = tmp_path / "clean.zarr"
    concat("ml-minibatch", [source, source], clean, index_unique="-", **shuffle)
    assert annlayout.verify(clean, out) == []
    got = ad.read_zarr(out)
    expected = sp.vstack([X, X]).tocsr()
    if options:
        expected = expected[np.asarray(got.uns["annlayout_order"]["source_row"])]
    assert (expected != got.X).nnz == 0


def test_resume_after_the_last_partial_bucket_was_recorded(tmp_path, monkeypatch):
    """Interrupted once every row is recorded but before the arrays' tails are written (the
    last bucket partial): the resumed run drains nothing again and equals the expected rows."""
    import annlayout.combine.concat as concatenate

    source = tmp_path / "in.h5ad"
    X = sp.random(1_750, 300, density=0.1, format="csr", dtype=np.float32, random_state=3)
    ad.AnnData(X=X).write_h5ad(source)
    out, scratch = tmp_path / "out.zarr", tmp_path / ".out.zarr.annlayout-concat"
    monkeypatch.setattr(concatenate, "checkpoint_bytes", lambda budget: 1)  # after every bucket

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(concatenate.WholeChunkWriter, "close", interrupted)
    with pytest.raises(KeyboardInterrupt):
        concat("ml-minibatch", [source, source], out, index_unique="-", shuffle=1, memory="1MiB")
    record = json.loads((scratch / "assembling" / "X.json").read_text())
    assert record["rows"] == 3_500 and record["rows"] % record["rows_per_bucket"]
    monkeypatch.undo()
    concat("ml-minibatch", [source, source], out, index_unique="-", shuffle=1, resume=True)
    got = ad.read_zarr(out)
    order = np.asarray(got.uns["annlayout_order"]["source_row"])
    assert (sp.vstack([X, X]).tocsr()[order] != got.X).nnz == 0


def test_resume_never_takes_combined_inputs_of_other_options(tmp_path):
    """Combined with one seed (then killed in the layout step), combined again with another
    seed under --resume (killed meanwhile): a --resume with the first seed combines again
    rather than trust the first run's marker."""
    source = tmp_path / "in.h5ad"
    X = sp.random(20_000, 2_000, density=0.05, format="csr", dtype=np.float32, random_state=1)
    ad.AnnData(X=X).write_h5ad(source)
    out, scratch = tmp_path / "out.zarr", tmp_path / ".out.zarr.annlayout-concat"
    _killed_after_combining(source, out, "--shuffle", "3")
    exe = Path(sys.executable).with_name("annlayout")
    command = [exe, "concat", "ml-minibatch", source, source, out, "--index-unique", "-",
               "--memory", "64MiB", "--quiet", "--shuffle", "5", "--resume"]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while _recorded(scratch, "scattered") < 5_000:
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    concat("ml-minibatch", [source, source], out, index_unique="-", shuffle=3, resume=True)
    got = ad.read_zarr(out)
    assert got.uns["annlayout_order"]["seed"] == 3
    order = np.asarray(got.uns["annlayout_order"]["source_row"])
    assert (sp.vstack([X, X]).tocsr()[order] != got.X).nnz == 0


def test_an_existing_output_is_refused_before_any_work(tmp_path, collection):
    paths, _ = collection
    out = tmp_path / "there.zarr"
    out.mkdir()
    result = CliRunner().invoke(main, ["concat", "analysis", *map(str, paths), str(out)])
    assert result.exit_code == 1 and "--overwrite" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there.zarr"]


def test_prefetched_blocks_keep_their_order_errors_and_stop_early():
    import threading

    from annlayout.combine.concat import prefetched

    assert list(prefetched(iter(range(50)))) == list(range(50))

    def failing():
        yield 1
        raise ValueError("input 2 is corrupt")

    got = []
    with pytest.raises(ValueError, match="input 2 is corrupt"):
        for value in prefetched(failing()):
            got.append(value)
    assert got == [1]
    produced = []

    def endless():
        for n in range(10**9):
            produced.append(n)
            yield n

    blocks = prefetched(endless())
    assert [next(blocks) for _ in range(3)] == [0, 1, 2]
    blocks.close()  # the caller stops early: the producer thread ends too
    assert not [t for t in threading.enumerate() if t.name == "annlayout-prefetch"]
    assert len(produced) < 10


def test_ordered_map_keeps_order_raises_and_stops_early():
    import threading
    import time

    from annlayout.combine.concat import ordered_map

    def slow_square(n):
        time.sleep(0.002 * (n % 3))  # later items finish first: the order is still kept
        return n * n

    assert list(ordered_map(slow_square, range(40), 2)) == [n * n for n in range(40)]

    def failing(n):
        if n == 2:
            raise ValueError("input 2 is corrupt")
        return n

    got = []
    with pytest.raises(ValueError, match="input 2 is corrupt"):
        for value in ordered_map(failing, range(10), 2):
            got.append(value)
    assert got == [0, 1]
    started = []

    def tracked(n):
        started.append(n)
        return n

    results = ordered_map(tracked, range(1000), 2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    results.close()  # the caller stops early: nothing more starts, the threads end
    assert len(started) <= 6
    assert not [t for t in threading.enumerate() if t.name.startswith("annlayout-prefetch_")]


def test_concat_resume_to_an_h5ad_layout_redoes_the_layout_step(tmp_path, collection):
    """apply resumes local zarr outputs only; an h5ad output's layout step runs whole."""
    paths, adatas = collection
    out = tmp_path / "combined.h5ad"
    result = concat("h5ad-gzip", paths, out, join="outer", index_unique="-", resume=True)
    assert result.verified and ad.read_h5ad(out).n_obs == sum(a.n_obs for a in adatas)


def test_tasks_combine_empty_inputs_and_inputs_without_nonzeros_as_serially(tmp_path):
    """An input with no cells, one with no nonzeros and one whose genes an inner join drops
    all: the task path's store equals the serial one's."""
    X = sp.random(300, 50, density=0.1, format="csr", dtype=np.float32, random_state=4)
    var = pd.DataFrame(index=[f"g{i}" for i in range(50)])
    parts = {
        "cells.h5ad": ad.AnnData(X=X, var=var),
        "none.h5ad": ad.AnnData(X=sp.csr_matrix((0, 50), dtype=np.float32), var=var),
        "zeros.h5ad": ad.AnnData(X=sp.csr_matrix((40, 50), dtype=np.float32), var=var),
        "other-genes.h5ad": ad.AnnData(
            X=sp.random(20, 5, density=0.5, format="csr", dtype=np.float32, random_state=5),
            var=pd.DataFrame(index=[f"h{i}" for i in range(5)]),
        ),
    }
    for name, adata in parts.items():
        adata.obs_names = [f"{name}-{i}" for i in range(adata.n_obs)]
        adata.write_h5ad(tmp_path / name)
    for join, names in (("outer", list(parts)), ("inner", list(parts)[:3])):
        paths = [tmp_path / name for name in names]
        for mode, workers in (("serial", 1), ("tasks", 2)):
            concat("ml-minibatch", paths, tmp_path / f"{join}-{mode}.zarr", join=join,
                   shuffle=1, memory="64KiB", workers=workers)  # fmt: skip
        assert _tree(tmp_path / f"{join}-serial.zarr") == _tree(tmp_path / f"{join}-tasks.zarr")
    # every gene dropped by an inner join is refused; inputs without genes combine to none
    paths = [tmp_path / name for name in ("cells.h5ad", "other-genes.h5ad")]
    with pytest.raises(ConcatError, match="0 genes"):
        concat("ml-minibatch", paths, tmp_path / "never.zarr", workers=2)
    paths = [tmp_path / "no-genes-a.h5ad", tmp_path / "no-genes-b.h5ad"]
    for i, path in enumerate(paths):
        adata = ad.AnnData(X=sp.csr_matrix((30 + i, 0), dtype=np.float32))
        adata.obs_names = [f"{path.stem}-{i}" for i in range(adata.n_obs)]
        adata.write_h5ad(path)
    for mode, workers in (("serial", 1), ("tasks", 2)):
        concat("ml-minibatch", paths, tmp_path / f"none-{mode}.zarr", workers=workers)
    assert _tree(tmp_path / "none-serial.zarr") == _tree(tmp_path / "none-tasks.zarr")
    assert ad.read_zarr(tmp_path / "none-tasks.zarr").shape == (61, 0)


@pytest.mark.parametrize("first", ["serial", "tasks"])
def test_resume_may_switch_between_serial_and_tasks(tmp_path, collection, monkeypatch, first):
    """Each run killed inside the combining of X: serial, then on tasks, then serially again
    (or the other way round); the last, not killed, equals a clean run. Neither path takes
    the other's partial arrays for its own."""
    import annlayout.combine.assembly as assembly
    import annlayout.combine.concat as concatenate
    from annlayout.storage.commit import Interrupted

    paths, _ = collection
    options = {"index_unique": "-", "shuffle": 2, "memory": "256KiB"}
    out = tmp_path / "out.zarr"
    put, run, growing = concatenate.Checkpoints.put, assembly.GatherTask.run, concatenate._growing
    # small chunks on both paths, so that a record counts whole chunks the other path wrote
    monkeypatch.setattr(assembly, "TASK_CHUNK", 64)
    monkeypatch.setattr(concatenate, "_growing", lambda *args: growing(*args[:3], 64))

    def serial_killed(self, name, saved=None, **record):
        put(self, name, saved, **record)
        if name == "X" and record.get("rows", 0) > 100:  # X partly written, recorded
            raise Interrupted(signal.SIGTERM)

    order = [first, "tasks" if first == "serial" else "serial", first]
    for number, mode in enumerate(order):
        workers = 2 if mode == "tasks" else 1
        with monkeypatch.context() as patch:
            patch.setattr(concatenate, "checkpoint_bytes", lambda budget: 1)
            if number < 2:
                patch.setattr(*(
                    (concatenate.Checkpoints, "put", serial_killed) if mode == "serial"
                    else (assembly.GatherTask, "run", _interrupted_at_bucket_5(run))
                ))  # fmt: skip
                with pytest.raises(Interrupted):
                    concat("ml-minibatch", paths, out, resume=number > 0, workers=workers,
                           **options)  # fmt: skip
            else:
                concat("ml-minibatch", paths, out, resume=True, workers=workers, **options)
    concat("ml-minibatch", paths, tmp_path / "clean.zarr", **options)
    assert annlayout.verify(tmp_path / "clean.zarr", out) == []
    assert _tree(tmp_path / "clean.zarr") == _tree(out)


def test_whole_chunks_are_written_by_their_bucket_and_shared_ones_from_the_pieces(tmp_path):
    import zarr

    from annlayout.write.whole_chunks import WholeChunkWriter, write_pieces

    def write_whole_chunks(array, start, values):  # as a gather task writes its bucket
        writer = WholeChunkWriter(array, 4, array.dtype, position=start, keep_partial=True)
        writer.write(values)
        return writer.close()

    array = zarr.create_array(tmp_path / "a.zarr", shape=(10,), chunks=(4,), dtype="i8")
    values = np.arange(10) + 100
    pieces = []
    for start, stop in [(0, 3), (3, 9), (9, 10)]:  # buckets: none covers chunk 0 or 2 whole
        pieces += write_whole_chunks(array, start, values[start:stop])
    assert [(at, list(v)) for at, v in pieces] == [
        (0, [100, 101, 102]), (3, [103]), (8, [108]), (9, [109])
    ]  # fmt: skip
    assert list(array[4:8]) == [104, 105, 106, 107] and list(array[:4]) == [0, 0, 0, 0]
    assert write_whole_chunks(array, 10, values[:0]) == []  # an empty last bucket
    write_pieces(array, iter(pieces), "a")
    assert list(array[...]) == list(values)
    with pytest.raises(RuntimeError, match="a: chunk 0 is incomplete"):
        write_pieces(array, iter([pieces[0], (4, np.zeros(1, dtype=np.int64))]), "a")

    # a bucket across a boundary that covers no chunk whole: two pieces, one per chunk
    other = zarr.create_array(tmp_path / "b.zarr", shape=(10,), chunks=(4,), dtype="i8")
    pieces = []
    for start, stop in [(0, 2), (2, 6), (6, 10)]:
        pieces += write_whole_chunks(other, start, values[start:stop])
    assert [(at, list(v)) for at, v in pieces] == [
        (0, [100, 101]), (2, [102, 103]), (4, [104, 105]), (6, [106, 107])
    ]  # fmt: skip
    write_pieces(other, iter(pieces), "b")
    assert list(other[...]) == list(values)
    with pytest.raises(RuntimeError, match="b: a piece at 2 crosses a chunk boundary"):
        write_pieces(other, iter([(0, values[:2]), (2, values[2:6])]), "b")


def test_an_inner_join_without_common_genes_is_refused_before_any_data_is_read(
    tmp_path, monkeypatch
):
    """Inputs that share no gene would make a store of cells without genes."""
    import annlayout.combine.concat

    def rename_genes(i, adata):
        if i == 2:
            adata.var.index = [f"other_{name}" for name in adata.var.index]

    paths, adatas = _h5ad_parts(tmp_path, [20, 30, 25], seed=1, change=rename_genes)

    def never(data):
        raise AssertionError(f"{data.source} was read")

    monkeypatch.setattr(annlayout.combine.concat, "small_elements_of", never)
    out = tmp_path / "never.zarr"
    result = CliRunner().invoke(main, ["concat", "ml-minibatch", *map(str, paths), str(out)])
    assert result.exit_code == 1, (result.output, result.exception)
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "--join outer" in message
    assert f"{paths[0]}, {paths[1]} and {paths[2]}" in message and "0 genes" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p0.h5ad", "p1.h5ad", "p2.h5ad"]
    monkeypatch.undo()
    done = CliRunner().invoke(main, ["concat", "ml-minibatch", *map(str, paths), str(out),
                                     "--join", "outer", "--quiet"])  # fmt: skip
    genes = set().union(*(a.var_names for a in adatas))
    assert done.exit_code == 0 and ad.read_zarr(out).n_vars == len(genes)


def test_repeated_obs_names_are_warned_about_with_their_count_and_the_fix(tmp_path, collection):
    """Barcodes repeat between the inputs: as anndata.concat does, concat warns (a note in
    the result, on stderr in the CLI), unless --index-unique makes them unique."""
    paths, adatas = collection
    expected = _expected(adatas)
    repeated = int(expected.obs_names.duplicated().sum())
    assert repeated > 0
    with pytest.warns(UserWarning, match=f"{repeated:,} cells have an obs name an earlier"):
        result = concat("ml-minibatch", paths, tmp_path / "a.zarr")
    assert "--index-unique -" in result.notes[0]
    done = CliRunner().invoke(main, ["concat", "ml-minibatch", *map(str, paths),
                                     str(tmp_path / "b.zarr")])  # fmt: skip
    assert done.exit_code == 0, done.output
    notes = [line for line in done.stderr.splitlines() if line.startswith("note:")]
    assert notes == [f"note: {result.notes[0]}"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all
        unique = concat("ml-minibatch", paths, tmp_path / "c.zarr", index_unique="-")
    assert unique.notes == []


def test_mixing_is_printed_only_for_shuffled_cells_and_json_has_it_all(tmp_path, collection):
    paths, _ = collection
    args = ["concat", "ml-minibatch", *map(str, paths)]
    ordered = CliRunner().invoke(main, [*args, str(tmp_path / "o.zarr"), "--index-unique", "-"])
    assert ordered.exit_code == 0 and "mixing:" not in ordered.output + ordered.stderr
    shuffled = CliRunner().invoke(main, [*args, str(tmp_path / "s.zarr"), "--index-unique", "-",
                                         "--shuffle", "0"])  # fmt: skip
    assert shuffled.exit_code == 0 and "mixing: " in shuffled.stdout
    as_json = CliRunner().invoke(main, [*args, str(tmp_path / "j.zarr"), "--json"])
    assert as_json.exit_code == 0, as_json.output
    summary = json.loads(as_json.stdout)  # one document: the repeated names note is in it
    assert summary["output"] == str(tmp_path / "j.zarr") and summary["layout"] == "ml-minibatch"
    assert summary["inputs"] == [str(p) for p in paths] and summary["verified"] is True
    assert summary["peak_rss"] > 0 and summary["seconds"] > 0
    assert summary["mixing"]["bits"] < summary["mixing"]["uniform"]  # in input order
    assert summary["mixing"]["window"] == 256
    assert "obs name" in summary["notes"][0] and as_json.stderr == ""
    appended = CliRunner().invoke(main, ["append", str(tmp_path / "j.zarr"), str(paths[0]),
                                         "--index-unique", "-", "--json"])  # fmt: skip
    assert appended.exit_code == 0, appended.output
    summary = json.loads(appended.stdout)
    assert summary["inputs"] == [str(paths[0])] and summary["verified"] is True
    assert summary["n_obs_added"] == ad.read_h5ad(paths[0]).n_obs and appended.stderr == ""


@pytest.mark.parametrize("workers", [1, 2], ids=["serial", "tasks"])
def test_a_signal_inside_a_library_write_is_reported_as_the_interrupt(
    tmp_path, collection, monkeypatch, workers
):
    """SIGINT landing inside numpy's write of a checkpoint (an .npz) was raised there, and
    numpy turned it into a TypeError (its C code calls back into Python, an ABC check of the
    file object, where the handler ran): exit 1, no checkpoint named. The signal is now
    recorded and raised between blocks; the run stops with its checkpoint and resumes."""
    import numpy.lib._npyio_impl as npyio

    from annlayout.storage.commit import Interrupted

    paths, adatas = collection
    options = {"index_unique": "-", "shuffle": 2, "memory": "256KiB", "merge": "same",
               "workers": workers}  # fmt: skip
    write_array = npyio.format.write_array
    sent: list[int] = []

    def signalled(fp, *args, **kwargs):
        if not sent:  # the first .npz: a checkpoint's tails, or a gather task's pieces
            sent.append(signal.SIGINT)
            if threading.current_thread() is threading.main_thread():
                try:  # the handler runs mid-write, as in numpy's callback into Python
                    signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
                except KeyboardInterrupt as err:  # what numpy makes of it
                    raise TypeError(
                        f"expected str, bytes or os.PathLike object, not {type(fp).__name__}"
                    ) from err
            else:  # a task's write: the main thread, waiting for the tasks, handles it
                os.kill(os.getpid(), signal.SIGINT)
        return write_array(fp, *args, **kwargs)

    monkeypatch.setattr(npyio.format, "write_array", signalled)
    out = tmp_path / "out.zarr"
    with pytest.raises(Interrupted) as stopped:
        concat("ml-minibatch", paths, out, **options)
    assert sent and stopped.value.signum == signal.SIGINT
    scratch = tmp_path / ".out.zarr.annlayout-concat"
    assert stopped.value.kept == (str(scratch),) and scratch.is_dir() and not out.exists()
    monkeypatch.undo()
    concat("ml-minibatch", paths, out, resume=True, **options)
    got = ad.read_zarr(out)
    order = np.asarray(got.uns.pop("annlayout_order")["source_row"])
    _assert_same(got, _expected(adatas, index_unique="-")[order].copy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


@pytest.mark.parametrize("bug", ["columns", "rows"])
def test_a_wrong_combination_fails_verification_against_the_inputs(
    tmp_path, collection, monkeypatch, bug
):
    """The output is checked against the inputs, not the combined inputs it was copied
    from: a column map or a row order off by one (which the scratch store shares) fails in
    one line naming the element, and nothing is left."""
    import annlayout.combine.concat as concatenate

    paths, _ = collection
    if bug == "columns":
        maps = concatenate.column_maps

        def off_by_one(names, genes):
            return [np.where(m >= 0, (m + 1) % len(names), m) for m in maps(names, genes)]

        monkeypatch.setattr(concatenate, "column_maps", off_by_one)
        flags = ["--join", "outer"]
    else:
        inverse = concatenate._inverse
        monkeypatch.setattr(concatenate, "_inverse", lambda order: np.roll(inverse(order), 1))
        flags = ["--shuffle", "3"]
    out = tmp_path / "out.zarr"
    result = CliRunner().invoke(
        main, ["concat", "ml-minibatch", *map(str, paths), str(out), "--index-unique", "-",
               "--quiet", *flags],
    )  # fmt: skip
    assert result.exit_code == 1, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "verification against the inputs failed" in lines[0], lines
    assert "X: row " in lines[0] and "part-" in lines[0]
    assert list(tmp_path.iterdir()) == []


CORPUS_PAIRS = [
    ("anndata-0.7.8.h5ad", "anndata-0.13.4-pandas3-v3.zarr", "outer"),
    ("anndata-0.10.9-scanpy-1.10.2.zarr", "anndata-0.12.19.h5ad", "inner"),
    ("anndata-0.12.19-denseX.h5ad", "anndata-0.13.4-pandas2-denseX-v3.zarr", "outer"),
]


@pytest.mark.parametrize(("first", "second", "join"), CORPUS_PAIRS)
def test_files_of_two_anndata_versions_pass_verification_against_the_inputs(
    tmp_path, first, second, join
):
    """Shuffled, so each input is read in order and the output in its own. The scanpy
    file's float32 counts met the other's int32 ones: a shuffle wrote the int32 values into
    float32 bucket files as they were (garbage), which only the check against the inputs
    saw."""
    from .test_corpus import CORPUS, assert_same, read_any

    a, b = CORPUS / "data" / first, CORPUS / "data" / second
    out = tmp_path / "out.zarr"
    result = concat("analysis", [a, b], out, join=join, index_unique="-", shuffle=1)
    assert result.verified
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ad.concat([read_any(a), read_any(b)], join=join, index_unique="-")
    got = read_any(out)
    order = np.asarray(got.uns.pop("annlayout_order")["source_row"])
    assert_same(got, expected[order].copy())


CORPUS_PAIR = [
    Path(__file__).parent / "corpus" / "data" / name
    for name in ("anndata-0.12.19.h5ad", "anndata-0.11.4.h5ad")
]


def test_plan_of_several_inputs_shows_the_model_concat_checks_and_writes_nothing(
    tmp_path, monkeypatch
):
    """`plan LAYOUT INPUT INPUT --memory` plans the store concat would write, from the
    inputs' metadata, with the numbers concat itself checks (one function for both)."""
    import annlayout.combine.concat as concatenate
    from annlayout.combine.concat import concat_plan

    monkeypatch.chdir(tmp_path)
    args = ["plan", "archive", *map(str, CORPUS_PAIR), "--join", "outer", "--index-unique", "-",
            "--memory", "1MiB"]  # fmt: skip
    shown = CliRunner().invoke(main, args)
    assert shown.exit_code == 0, (shown.output, shown.exception)
    assert "memory: --memory 1.0 MiB" in shown.stdout and "X (csr)" in shown.stdout
    as_json = CliRunner().invoke(main, [*args, "--json"])
    assert as_json.exit_code == 0, (as_json.output, as_json.exception)
    planned = json.loads(as_json.stdout)
    assert list(tmp_path.iterdir()) == []  # nothing written

    options = annlayout.RunOptions(memory="1MiB")
    plan, model = concat_plan("archive", CORPUS_PAIR, join="outer", index_unique="-",
                              options=options)  # fmt: skip
    assert planned["memory"] == json.loads(json.dumps(model.to_json()))
    assert planned["elements"] == json.loads(json.dumps(plan.to_dict()))["elements"]
    checked = []
    within = concatenate.plan_within_budget

    def recording(*args, **kwargs):
        checked.append(within(*args, **kwargs))
        return checked[-1]

    monkeypatch.setattr(concatenate, "plan_within_budget", recording)
    concat("archive", CORPUS_PAIR, tmp_path / "out.zarr", join="outer", index_unique="-",
           memory="1MiB")  # fmt: skip
    assert [json.loads(json.dumps(m.to_json())) for _, m in checked] == [planned["memory"]]


def test_plan_of_several_inputs_refuses_with_concats_own_line(tmp_path, monkeypatch):
    """A budget concat refuses, plan refuses too: the same one line, exit 1, no traceback,
    nothing written."""
    import annlayout.combine.concat as concatenate

    monkeypatch.setattr(concatenate, "WHOLE_BELOW", "1KiB")  # small elements streamed too
    monkeypatch.chdir(tmp_path)
    inputs = [*map(str, CORPUS_PAIR)]
    planned = CliRunner().invoke(main, ["plan", "archive", *inputs, "--memory", "16KiB"])
    ran = CliRunner().invoke(
        main, ["concat", "archive", *inputs, str(tmp_path / "out.zarr"), "--memory", "16KiB"]
    )
    assert planned.exit_code == ran.exit_code == 1, (planned.output, planned.exception)
    assert "more than --memory" in planned.stderr and len(planned.stderr.splitlines()) == 1
    assert planned.stderr == ran.stderr and "Traceback" not in planned.output
    assert list(tmp_path.iterdir()) == []
    both = CliRunner().invoke(main, ["plan", "archive", *inputs, "--whole-below", "1MiB"])
    assert both.exit_code == 1 and "--whole-below" in both.stderr
    one = CliRunner().invoke(main, ["plan", "archive", inputs[0], "--join", "outer"])
    assert one.exit_code == 1 and "--join" in one.stderr
