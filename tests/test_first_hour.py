"""What a new user meets in the first hour: refusals before work, errors in the user's terms,
output that says what happened. Each test stands for a report of issue 27."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import annlayout
from annlayout.base.errors import ApplyError, NotAnnDataError
from annlayout.cli import main

CORPUS = Path(__file__).parent / "corpus" / "data"
PBMC = CORPUS / "scanpy-pbmc68k_reduced.h5ad"
LEGACY = CORPUS / "anndata-0.7.8.h5ad"
COMMANDS = ["plan", "inspect", "apply", "verify", "concat", "append", "bench", "generate"]


def run(*args: object, code: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.stderr, result.exception)
    assert "Traceback" not in result.output + result.stderr
    return result


def one_error(result) -> str:
    """The single line an error is reported in."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# -- what anndata reads from annlayout's stores


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The README's demo dataset (annlayout generate's defaults: 5,000 x 2,000)."""
    from annlayout.generate.synthetic import make_dataset

    path = tmp_path_factory.mktemp("demo") / "demo.h5ad"
    make_dataset(5_000, 2_000).write_h5ad(path)
    return path


@pytest.mark.parametrize("layout", ["ml-minibatch", "cell-browser", "archive", "analysis"])
def test_anndata_selects_genes_from_every_layouts_store(demo, tmp_path, layout):
    """A store's index arrays are handed by anndata to scipy as stored: uint16 indices (the
    minimal dtype once) crashed the process on the README demo's adata[rows, genes], or gave
    wrong values. Run in a child, so a crash is a failure and not the end of the suite."""
    output = tmp_path / "out.zarr"
    annlayout.apply(layout, demo, output)
    code = f"""
import anndata as ad, numpy as np, scipy.sparse as sp
got, want = ad.read_zarr({str(output)!r}), ad.read_h5ad({str(demo)!r})
genes = want.var_names[::-1][: want.n_vars // 2]
for key in [(slice(100, 4000), genes), (np.arange(0, want.n_obs, 3), genes[:7])]:
    assert (sp.csr_matrix(got[key].X) != sp.csr_matrix(want[key].X)).nnz == 0
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


# -- 1. the output's name and the layout's format


@pytest.mark.parametrize(
    ("layout", "name", "wants"),
    [("h5ad-gzip", "out.zarr", ".h5ad"), ("ml-minibatch", "out.h5ad", ".zarr")],
)
def test_apply_refuses_an_output_named_for_the_other_format(stores, tmp_path, layout, name, wants):
    line = one_error(run("apply", layout, stores["h5ad"], tmp_path / name, code=1))
    assert name in line and wants in line and layout in line
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_concat_refuses_an_output_named_for_the_other_format(stores, tmp_path):
    line = one_error(run("concat", "h5ad-gzip", stores["h5ad"], stores["zarr3"],
                         tmp_path / "both.zarr", code=1))  # fmt: skip
    assert "both.zarr" in line and "h5ad-gzip" in line and ".h5ad" in line
    assert not any(tmp_path.iterdir())


def test_concat_without_its_output_says_so(stores):
    line = one_error(run("concat", "ml-minibatch", stores["h5ad"], stores["h5ad"], code=1))
    assert "the last path is OUTPUT" in line and str(stores["h5ad"]) in line


def test_write_refuses_an_output_named_for_the_other_format(small_dataset, tmp_path):
    with pytest.raises(ApplyError, match=r"writes h5ad.*\.zarr"):
        annlayout.write(small_dataset, tmp_path / "out.zarr", "h5ad-gzip")
    with pytest.raises(ApplyError, match=r"writes zarr.*\.h5ad"):
        annlayout.apply("ml-minibatch", "missing.h5ad", tmp_path / "out.h5ad")
    assert not any(tmp_path.iterdir())


# -- 3. Plan.to_json is JSON


def test_plan_to_json_is_json_text(stores):
    plan = annlayout.plan("cell-browser", stores["h5ad"])
    text = plan.to_json()
    assert isinstance(text, str)
    assert json.loads(text) == plan.to_dict()
    assert plan.to_dict()["n_objects"] == plan.n_objects


# -- 5. a truncated h5ad


def test_a_truncated_h5ad_is_named_and_called_truncated(stores, tmp_path):
    cut = tmp_path / "cut.h5ad"
    cut.write_bytes(stores["h5ad"].read_bytes()[:10_240])
    for args in (["inspect", cut], ["apply", "ml-minibatch", cut, tmp_path / "o.zarr"]):
        line = one_error(run(*args, code=1))
        assert str(cut) in line and "truncated" in line and "OSError" not in line
    with pytest.raises(NotAnnDataError, match="truncated"):
        annlayout.open(cut)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.h5ad"]


def test_verify_names_the_element_whose_chunk_is_corrupt(stores, tmp_path):
    output = tmp_path / "out.zarr"
    annlayout.apply("ml-minibatch", stores["h5ad"], output)
    shard = next(p for p in sorted((output / "X" / "data" / "c").rglob("*")) if p.is_file())
    shard.write_bytes(shard.read_bytes()[:100])
    result = run("verify", stores["h5ad"], output, code=1)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("differs: X: a read failed"), result.output
    assert str(output) in lines[0] and "Traceback" not in result.stderr


# -- 6. an output in a directory that cannot be written


def test_an_unwritable_output_directory_is_refused_before_reading(stores, tmp_path):
    """Permissions do not stop root (CI), a read-only mount does: as root the command runs
    in a mount namespace of its own where the directory is mounted read-only."""
    locked = tmp_path / "ro"
    locked.mkdir()
    command = [sys.executable, "-m", "annlayout.cli", "apply", "ml-minibatch",
               str(stores["h5ad"]), str(locked / "out.zarr")]  # fmt: skip
    if os.geteuid() == 0:
        if not shutil.which("unshare"):
            pytest.skip("root without unshare: no way to make a directory unwritable")
        remount = f"mount --bind {locked} {locked} && mount -o remount,ro,bind {locked}"
        command = ["unshare", "--mount", "sh", "-c", f'{remount} && exec "$@"', "sh", *command]
    else:
        locked.chmod(0o555)
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write in" in lines[0], done.stderr
    assert str(locked / "out.zarr") in lines[0] and "annlayout-tmp" not in lines[0]
    assert not list(locked.iterdir())


# -- 8. the Python API


@pytest.mark.parametrize(
    "name",
    ["scanpy-pbmc68k_reduced.h5ad", "anndata-0.12.19.zarr", "anndata-0.13.4-pandas3.zarr",
     "anndata-0.13.4-pandas3.h5ad", "anndata-0.9.2.h5ad"],
)  # fmt: skip
def test_to_adata_keeps_the_dtypes_anndata_reads(name):
    """Categorical columns stayed categorical, object strings object (they came back as
    plain object or str arrays)."""
    path = CORPUS / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = (ad.read_h5ad if name.endswith(".h5ad") else ad.read_zarr)(path)
        got = annlayout.open(path).to_adata(obs=slice(0, 30))
    for axis in ("obs", "var"):
        want = getattr(expected, axis).dtypes.astype(str).to_dict()
        assert getattr(got, axis).dtypes.astype(str).to_dict() == want, axis
    assert list(got.obs_names) == list(expected.obs_names[:30])


@pytest.mark.parametrize("name", ["scanpy-pbmc68k_reduced.h5ad", "anndata-0.12.19.zarr"])
def test_raw_is_an_object_with_x_and_var(name):
    """pbmc68k_reduced's raw is of anndata 0.6 (read whole), the other's raw of today's."""
    data = annlayout.open(CORPUS / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = (ad.read_h5ad if name.endswith(".h5ad") else ad.read_zarr)(CORPUS / name)
    assert data.raw is not None and expected.raw is not None
    rows = np.array([0, 5, 17]) % expected.n_obs
    genes = list(expected.raw.var_names[[-1, 0]])  # raw's own genes, not X's
    for key in ((rows, slice(None)), (rows, genes)):
        want = expected.raw.X[key[0], :][
            :,
            expected.raw.var_names.get_indexer(
                key[1] if isinstance(key[1], list) else expected.raw.var_names
            ),
        ]
        got = data.raw.X[key]
        got, want = (x.toarray() if sp.issparse(x) else np.asarray(x) for x in (got, want))
        np.testing.assert_array_equal(got, want)
    assert list(data.raw.var.index) == list(expected.raw.var_names)


def test_write_refuses_an_existing_store_unless_told(small_dataset, tmp_path):
    path = tmp_path / "w.zarr"
    annlayout.write(small_dataset, path, "ml-minibatch")
    before = sorted(p.name for p in path.rglob("*"))
    with pytest.raises(ApplyError, match="already exists"):
        annlayout.write(small_dataset, path, "ml-minibatch")
    assert sorted(p.name for p in path.rglob("*")) == before
    annlayout.write(small_dataset, path, "analysis", overwrite=True)
    assert annlayout.survey(path).provenance["layout"] == "analysis"
    with pytest.raises(ApplyError, match="directory does not exist"):
        annlayout.write(small_dataset, tmp_path / "nowhere" / "w.zarr", "ml-minibatch")
    assert not (tmp_path / "nowhere").exists()


def test_callback_into_h5py_names_the_codecs_it_cannot_write(small_dataset, tmp_path):
    layout = annlayout.load_layout("ml-minibatch")
    with h5py.File(tmp_path / "cb.h5ad", "w") as file, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ad.experimental.write_dispatched(
            file, "/", small_dataset, callback=annlayout.layout_callback(layout)
        )
    messages = [str(w.message) for w in seen if "ml-minibatch" in str(w.message)]
    assert len(messages) == 1
    assert "blosc(lz4" in messages[0] and "uncompressed" in messages[0] and "shards" in messages[0]


# -- 10. arguments named in usage lines and help


@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_every_argument(command):
    text = run(command, "--help").output
    usage = text.splitlines()[0]
    assert "PATH_OR_URL" not in usage
    for argument in ("LAYOUT", "INPUT", "OUTPUT", "STORE"):
        if argument in usage:  # named in the usage line, so said what it is below
            assert text.count(argument) >= 2, (argument, text)


def test_a_missing_output_is_called_output(stores):
    result = run("apply", "ml-minibatch", stores["h5ad"], code=2)
    assert "Missing argument 'OUTPUT'" in result.stderr


# -- 11. global options after the command name


def test_global_options_are_accepted_after_the_command(stores):
    run("inspect", stores["zarr3"], "--store-backend", "fsspec")
    run("inspect", stores["zarr3"], "--store-backend=obstore")
    result = run("inspect", "missing.zarr", "--debug", code=1)
    assert isinstance(result.exception, NotAnnDataError)  # --debug: raised, not reported


# -- 13, 15, 16. what apply and verify print


def test_legacy_upgrades_are_one_line_unless_verbose(tmp_path):
    output = tmp_path / "legacy.zarr"
    result = run("apply", "ml-minibatch", LEGACY, output)
    upgraded = [line for line in result.stderr.splitlines() if line.startswith("upgraded:")]
    assert len(upgraded) == 1 and "--verbose" in upgraded[0]
    verbose = run("verify", LEGACY, output, "--verbose")
    assert sum(line.startswith("upgraded:") for line in verbose.stderr.splitlines()) >= 2


def test_a_budget_below_whole_elements_says_so(stores, tmp_path):
    result = run("apply", "ml-minibatch", stores["h5ad"], tmp_path / "o.zarr", "--memory", "1KiB")
    notes = [line for line in result.stderr.splitlines() if "--whole-below" in line]
    assert len(notes) == 1 and "--memory 1.0 KiB" in notes[0]
    quiet = run("apply", "ml-minibatch", stores["h5ad"], tmp_path / "p.zarr")
    assert "--whole-below" not in quiet.stderr  # true for the data: nothing exceeds 2 GiB


def test_apply_reports_writing_and_verifying_apart(stores, tmp_path):
    output = run("apply", "ml-minibatch", stores["h5ad"], tmp_path / "o.zarr").output
    assert "wrote and verified" in output
    assert "s writing, " in output and "s verifying)" in output


# -- 18. errors under --json


@pytest.mark.parametrize(
    "args",
    [["apply", "ml-minibatch", "missing.h5ad", "o.zarr"], ["inspect", "missing.zarr"],
     ["verify", "missing.h5ad", "missing.zarr"], ["plan", "ml-minibatch", "missing.h5ad"]],
)  # fmt: skip
def test_errors_are_json_under_json(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run(*args, "--json", code=1)
    document = json.loads(result.stderr)
    assert "missing" in document["error"] and document["exit_code"] == 1
    assert result.stdout == ""


def test_layout_errors_are_json_under_json(stores, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "annlayout: 1\nname: bad\nrules:\n  - match: {path: X}\n    chunks: {major: -1}\n"
    )
    document = json.loads(run("plan", bad, stores["h5ad"], "--json", code=2).stderr)
    assert document["exit_code"] == 2 and "bad.yaml" in document["errors"][0]


def test_a_memory_without_a_unit_is_refused_not_read_as_bytes(stores, tmp_path):
    line = one_error(run("apply", "ml-minibatch", stores["h5ad"], tmp_path / "o.zarr",
                         "--memory", "10", code=1))  # fmt: skip
    assert "--memory '10': give a unit (e.g. 10GiB" in line
    assert not (tmp_path / "o.zarr").exists()


def test_obs_shows_its_shape_and_columns_and_reads_as_pandas():
    obs = annlayout.open(PBMC).obs
    expected = ad.read_h5ad(PBMC).obs
    assert obs.shape == expected.shape
    assert repr(obs).startswith(
        f"annlayout.Frame: {len(expected):,} rows x {expected.shape[1]} columns ("
    )
    assert obs.head(3).equals(expected.head(3))
    frame = obs.to_pandas()
    assert list(frame.columns) == list(expected.columns)
    assert frame.index.equals(expected.index)
    for column in expected.columns:
        assert frame[column].dtype == expected[column].dtype, column
