"""Files nobody in this project wrote: every corpus file x shipped layouts, on this stack.

The corpus (tests/corpus/, see its README) holds small files written by anndata 0.6 to 0.13,
by scanpy, on pandas 2 and 3. The rule: what anndata (of the running stack) reads from the
output equals what it reads from the input, dtypes included; legacy forms come out in the
current encoding, as anndata itself upgrades them.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import annlayout
from annlayout.format.encodings import attr, encoding_of, unholdable
from annlayout.storage.stores import open_store
from annlayout.verify.compare import difference, verify_report

from .conftest import SHIPPED, output_name

CORPUS = Path(__file__).parent / "corpus"
STACK = ".".join(version("anndata").split(".")[:2])
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
READABLE = [f for f in MANIFEST["files"] if STACK in f["readable_by"]]
#: where outputs are kept for the other stack to read (.ci/run sets it), or None
CROSS_STACK = (
    Path(os.environ["ANNLAYOUT_CROSS_STACK"]) if "ANNLAYOUT_CROSS_STACK" in os.environ else None
)
_REFERENCES = tempfile.TemporaryDirectory(prefix="annlayout-corpus-")  # removed at exit


def read_any(path: Path) -> ad.AnnData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ad.read_h5ad(path) if path.suffix == ".h5ad" else ad.read_zarr(path)


def assert_same(a: ad.AnnData, b: ad.AnnData, where: str = "") -> None:
    """anndata's reads of two stores are equal: values, dtypes, categories, index, uns.

    Matrices are compared sparsely (anndata.tests.helpers.assert_equal densifies them).
    """
    assert a.shape == b.shape, where
    for axis in ("obs", "var"):
        pd.testing.assert_frame_equal(getattr(a, axis), getattr(b, axis), obj=f"{where}{axis}")
    assert_same_matrix(a.X, b.X, f"{where}X")
    for mapping in ("layers", "obsm", "varm", "obsp", "varp"):
        first, second = getattr(a, mapping), getattr(b, mapping)
        # 0.13: layers[None] is X; zarr lists keys sorted, h5py in creation order
        keys = sorted(k for k in first if k is not None)
        assert keys == sorted(k for k in second if k is not None), f"{where}{mapping}"
        for key in keys:
            value = first[key]
            if isinstance(value, pd.DataFrame):
                pd.testing.assert_frame_equal(value, second[key], obj=f"{where}{mapping}/{key}")
            else:
                assert_same_matrix(value, second[key], f"{where}{mapping}/{key}")
    problem = difference(dict(a.uns), dict(b.uns))
    assert problem is None, f"{where}uns: {problem}"
    if a.n_obs == 0 and (a.raw is None) != (b.raw is None):
        return  # read_zarr drops a raw of 0 rows that read_h5ad reads: anndata's own quirk
    assert (a.raw is None) == (b.raw is None), f"{where}raw"
    if a.raw is not None:
        pd.testing.assert_frame_equal(a.raw.var, b.raw.var, obj=f"{where}raw/var")
        assert_same_matrix(a.raw.X, b.raw.X, f"{where}raw/X")


def assert_same_matrix(a, b, where: str) -> None:
    if a is None or b is None:
        assert a is None and b is None, where
        return
    assert type(a) is type(b) or (sp.issparse(a) and sp.issparse(b)), where
    if type(a).__module__.startswith("awkward"):
        import awkward as ak

        assert ak.to_list(a) == ak.to_list(b), where
        return
    assert a.shape == b.shape and a.dtype == b.dtype, f"{where}: {a.dtype} vs {b.dtype}"
    if sp.issparse(a):
        assert (a != b).nnz == 0, where
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where


def _rewrites() -> list[tuple[dict, str]]:
    """Which layouts each corpus file is rewritten with: every shipped layout for the files in
    legacy forms or of scanpy (written before anndata 0.10: the forms most often upgraded);
    two for the rest, in turn, so each layout still meets every writer and format. (All 53
    files x 6 layouts took 7 minutes of each stack's CI run.)"""
    pairs = []
    for number, entry in enumerate(READABLE):
        if _written_before_anndata_0_10(entry["file"]):
            pairs += [(entry, layout) for layout in SHIPPED]
        else:
            pairs += [(entry, SHIPPED[(number + k) % len(SHIPPED)]) for k in (0, 2)]
    return pairs


def _written_before_anndata_0_10(name: str) -> bool:
    if not name.startswith("anndata-"):  # scanpy's example file
        return True
    major, minor = map(int, name.split("-")[1].split(".")[:2])
    return (major, minor) < (0, 10)


REWRITES = _rewrites()


@pytest.mark.parametrize(
    ("entry", "layout"), REWRITES, ids=[f"{e['file']}-{layout}" for e, layout in REWRITES]
)
def test_every_corpus_file_rewrites_equal(tmp_path, entry, layout):
    source = CORPUS / entry["path"]
    out = tmp_path / output_name(layout)
    result = annlayout.apply(layout, source, out, memory="256MiB", small_element="64KiB")
    assert result.verified  # annlayout.verify(source, out) found no difference
    root = open_store(out)
    assert (attr(root, "encoding-type"), attr(root, "encoding-version")) == ("anndata", "0.1.0")
    if hasattr(root, "close"):
        root.close()
    written, where = read_any(out), f"{entry['file']} -> {layout}: "
    try:
        assert_same(read_any(source), written, where)
    except AssertionError:  # as long as anndata's own round trip changes it the same way
        assert_same(anndata_round_trip(source, out.suffix, zarr_format(out)), written, where)
    if CROSS_STACK:  # for the other stack to read (tests/test_cross_stack.py)
        keep = CROSS_STACK / STACK / f"{entry['file']}--{layout}{out.suffix}"
        keep.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if out.is_dir() else shutil.copy)(out, keep)


def zarr_format(path: Path) -> int | None:
    import zarr

    return None if path.suffix == ".h5ad" else zarr.open_group(path, mode="r").metadata.zarr_format


@functools.cache
def anndata_round_trip(source: Path, suffix: str, fmt: int | None) -> ad.AnnData:
    """What anndata reads back after writing what it read from ``source`` itself: where
    anndata's own round trip changes a read (0.12 writes ``string`` categories as object
    ones; 0.13 on pandas 3 reads stored strings as object from zarr, as ``str`` from h5ad),
    a rewrite through anndata's writer does the same. (Without turning strings into
    categoricals, which anndata's writers do by default and a rewrite must not.)"""
    adata = read_any(source)
    path = Path(tempfile.mkdtemp(dir=_REFERENCES.name)) / f"reference{suffix}"
    with warnings.catch_warnings(), ad.settings.override(allow_write_nullable_strings=True):
        warnings.simplefilter("ignore")
        if suffix == ".h5ad":
            adata.write_h5ad(path, convert_strings_to_categoricals=False)
        else:
            with ad.settings.override(zarr_write_format=fmt):
                adata.write_zarr(path, convert_strings_to_categoricals=False)
    return read_any(path)


# ------------------------------------------------------------------ the four failure classes
# (issue: "every AnnData file people have"); each failed before read_upgraded.

PANDAS3 = int(pd.__version__.split(".")[0]) >= 3


def corpus(name: str) -> Path:
    return CORPUS / "data" / name


def test_scanpy_example_to_zarr_reads_back_equal(tmp_path):
    """Class 1: pbmc68k_reduced (anndata 0.6: compound obs, obsm as a record array with
    subarray fields, neighbors in uns) crashed every zarr layout."""
    source = corpus("scanpy-pbmc68k_reduced.h5ad")
    result = annlayout.apply("ml-minibatch", source, tmp_path / "out.zarr")
    assert result.verified
    assert any("obsm" in line for line in result.upgrades), result.upgrades
    written = read_any(tmp_path / "out.zarr")
    assert_same(read_any(source), written)
    assert set(written.obsm) == {"X_pca", "X_umap"} and written.obsm["X_pca"].ndim == 2
    assert set(written.obsp) == {"distances", "connectivities"}  # moved from uns/neighbors


@pytest.mark.parametrize("name", ["anndata-0.7.8.h5ad", "anndata-0.7.8.zarr"])
def test_categories_of_anndata_0_7_are_an_upgrade_not_a_difference(tmp_path, name):
    """Class 2: obs/__categories failed verification ("encoding array became string-array")."""
    source = corpus(name)
    out = tmp_path / "out.zarr"
    result = annlayout.apply("cell-browser", source, out)
    assert result.verified
    assert any("__categories" in line for line in result.upgrades), result.upgrades
    report = verify_report(source, out)
    assert report.differences == [] and report.upgrades == result.upgrades
    written, original = read_any(out), read_any(source)
    for column in ("cell_type", "stage"):
        assert list(written.obs[column].cat.categories) == list(original.obs[column].cat.categories)
        assert written.obs[column].cat.ordered == original.obs[column].cat.ordered


@pytest.mark.parametrize("layout", ["ml-minibatch", "h5ad-gzip"])
def test_nullable_strings_of_anndata_0_13_are_written_back(tmp_path, layout):
    """Class 3: files written by anndata 0.13 on pandas 3 hold nullable strings, which anndata
    0.12 refuses to write unless asked (allow_write_nullable_strings)."""
    source = corpus("anndata-0.13.4-pandas3-nullstr.h5ad")
    out = tmp_path / output_name(layout)
    assert annlayout.apply(layout, source, out).verified
    stored = open_store(out)
    try:
        assert encoding_of(stored["obs/cell_label"]) == "nullable-string-array"
    finally:
        if hasattr(stored, "close"):
            stored.close()
    assert_same(read_any(source), read_any(out))


@pytest.mark.skipif(not PANDAS3, reason="pandas 3 reads strings as `str`; pandas 2 has none")
@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("anndata-0.12.19.h5ad", "ml-minibatch"),  # the case that failed: h5ad -> zarr
        ("anndata-0.10.9.h5ad", "anndata-default"),
        ("anndata-0.13.4-pandas3.h5ad", "h5ad-gzip"),
        ("anndata-0.13.4-pandas3-v3.zarr", "ml-minibatch"),
    ],
)
def test_pandas3_str_columns_stay_str(tmp_path, name, layout):
    """Class 4: on pandas 3, `str` columns of an h5ad input came back as object from a zarr
    output (its string columns were written as `string-array`, which anndata reads from zarr
    as object); a `str` column is now written as anndata writes `str`."""
    source = corpus(name)
    out = tmp_path / output_name(layout)
    annlayout.apply(layout, source, out)
    before, after = read_any(source).obs, read_any(out).obs
    assert str(before["cell_label"].dtype) == "str"
    assert (after.dtypes == before.dtypes).all(), after.dtypes[after.dtypes != before.dtypes]


# ------------------------------------------------------------------ targets that cannot hold


def test_a_dtype_the_target_cannot_hold_is_refused_before_writing(tmp_path):
    """numpy datetimes have no HDF5 form: plan warns naming the element, apply stops with one
    line and writes nothing."""
    source = tmp_path / "dates.zarr"
    adata = ad.AnnData(sp.random(30, 10, density=0.2, format="csr", dtype=np.float32))
    adata.uns["sampled_on"] = np.array(["2020-01-01", "2021-02-03"], dtype="datetime64[ns]")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_zarr(source)
    plan = annlayout.plan("h5ad-gzip", source)
    assert plan.unwritable == ["uns/sampled_on: h5ad (HDF5) has no form for numpy datetime64[ns]"]
    assert any(w.startswith("uns/sampled_on: ") for w in plan.all_warnings())
    assert annlayout.plan("ml-minibatch", source).unwritable == []  # zarr holds it

    out = tmp_path / "out.h5ad"
    done = subprocess.run(
        [sys.executable, "-m", "annlayout.cli", "apply", "h5ad-gzip", str(source), str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "error: uns/sampled_on: h5ad (HDF5) has no form for numpy datetime64[ns]; nothing written"
    ]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["dates.zarr"]


def test_a_record_array_with_subarray_fields_has_no_zarr_form():
    assert "zarr" in unholdable(np.dtype([("X_pca", "f4", (2,))]))
    assert unholdable(np.dtype([("a", "i4"), ("b", "f8")])) == {}
    assert set(unholdable(np.dtype("timedelta64[s]"))) == {"h5ad"}


# ------------------------------------------------------------------ strings across backends


def test_a_changed_string_is_found_across_backends(tmp_path):
    """anndata 0.13 reads the same stored strings as object from zarr and as `str` from h5ad;
    verify lets that pass (the stored encodings decide), but never a changed value."""
    import h5py

    source = corpus("anndata-0.10.9.zarr")
    out = tmp_path / "out.h5ad"
    assert annlayout.apply("h5ad-gzip", source, out).verified
    with h5py.File(out, "r+") as f:
        labels = f["obs/cell_label"]
        values = labels.asstr()[...]
        values[3] = values[3] + "-changed"
        labels[...] = values.astype(object)
    assert verify_report(source, out).differences == ["obs/cell_label: values differ"]


def test_apply_opens_its_input_once_and_reads_a_legacy_one_twice(tmp_path, monkeypatch):
    """One handle is passed down (survey, rewrite, verify); anndata reads a legacy input for
    the survey and verify together (cached on the handle) and once for the rewrite."""
    from annlayout.apply import stream
    from annlayout.format import encodings
    from annlayout.storage import stores

    source = corpus("anndata-0.7.8.h5ad")
    opened, reads = [], []
    open_root, read_upgraded = stores._open_root, encodings.read_upgraded

    def counting_open(path, fmt, mode, *remote):
        opened.append(Path(str(path)).name)
        return open_root(path, fmt, mode, *remote)

    def counting_read(root, large):
        reads.append(Path(root.filename).name if hasattr(root, "filename") else "zarr")
        return read_upgraded(root, large)

    monkeypatch.setattr(stores, "_open_root", counting_open)
    monkeypatch.setattr(stores, "read_upgraded", counting_read)
    monkeypatch.setattr(stream, "read_upgraded", counting_read)
    assert annlayout.apply("h5ad-gzip", source, tmp_path / "out.h5ad").verified
    assert opened.count(source.name) == 1, opened
    assert reads.count(source.name) == 2, reads


def test_inspect_and_verify_say_what_anndata_upgrades(tmp_path):
    from click.testing import CliRunner

    from annlayout.cli import main

    source = corpus("anndata-0.7.8.zarr")
    out = tmp_path / "out.zarr"
    annlayout.apply("ml-minibatch", source, out)
    runner = CliRunner()
    shown = runner.invoke(main, ["inspect", str(source)])
    assert shown.exit_code == 0
    assert "legacy form: obs/__categories: categories beside the codes" in shown.output
    checked = runner.invoke(main, ["verify", "--json", str(source), str(out)])
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.output)
    assert report["equal"] and any("__categories" in u for u in report["upgrades"])
    assert "legacy form" not in runner.invoke(main, ["inspect", str(out)]).output


@pytest.mark.parametrize("entry", READABLE, ids=[f["file"] for f in READABLE])
def test_every_corpus_file_plans_surveys_and_opens(entry):
    """plan, inspect (the survey) and annlayout.open on files nobody in this project wrote:
    open's rows, obs and var equal anndata's read."""
    source = CORPUS / entry["path"]
    expected = read_any(source)
    survey = annlayout.survey(source)
    assert survey.shape in (expected.shape, None)
    plan = annlayout.plan("ml-minibatch", source)
    assert plan.elements and not plan.unwritable
    data = annlayout.open(source)
    assert data.shape == expected.shape
    assert (len(data.obs), len(data.var)) == expected.shape  # before the names are read
    assert list(data.obs.index) == list(expected.obs_names)
    assert list(data.var.index) == list(expected.var_names)
    if expected.X is None or expected.n_obs == 0:
        return
    rows = np.unique(np.random.default_rng(0).integers(0, expected.n_obs, 16))
    got, want = data.X[rows, :], expected.X[rows, :]
    if sp.issparse(want):
        assert sp.issparse(got) and got.shape == want.shape and (got != want).nnz == 0
    else:
        assert np.array_equal(np.asarray(got), np.asarray(want))
    for key, matrix in data.obsm.items():
        if matrix.encoding == "array":  # awkward arrays and dataframes are not matrices
            assert np.array_equal(matrix[rows, :], np.asarray(expected.obsm[key])[rows]), key


def test_shipped_layouts_warn_only_what_is_true_of_pbmc():
    """pbmc68k_reduced (700 cells, 765 genes, dense X, sparse raw/X): its chunks are small
    only because the data is (some dozens per array), so no layout warns about them; the
    cell-browser's CSC copy needs a sparse X, and the plan says so in those terms."""
    from click.testing import CliRunner

    from annlayout.cli import main

    source = CORPUS / "data" / "scanpy-pbmc68k_reduced.h5ad"
    survey = annlayout.survey(source)
    for name in SHIPPED:
        warned = annlayout.make_plan(annlayout.load_layout(name), survey).all_warnings()
        assert not [w for w in warned if "64 KiB" in w], (name, warned)
    result = CliRunner().invoke(main, ["plan", "cell-browser", str(source)])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "warning: cell-browser: X is a dense array (array), so rule 0 (cell-browser.yaml:18), "
        "which is for csr_matrix or csc_matrix, does not apply to it: no CSC copy for gene "
        "queries; X takes the defaults"
    ]


@pytest.mark.parametrize("name", ["scanpy-pbmc68k_reduced.h5ad", "anndata-0.7.8.zarr"])
def test_bench_on_files_of_old_anndata(tmp_path, name):
    """bench materializes candidates from a legacy input and replays a workload on them."""
    from annlayout.bench import load_workload, run_bench

    result = run_bench(
        corpus(name), load_workload("cell-browser"), workdir=tmp_path, layouts=["ml-minibatch"]
    )
    assert [c.name for c in result.candidates] == ["ml-minibatch"]
    assert result.winner.name == "ml-minibatch"
    assert all(r.requests > 0 for r in result.candidates[0].results)
    # anndata's lazy readers are measured on sparse X only, and the result says so
    dense = not sp.issparse(read_any(corpus(name)).X)
    assert result.skipped_readers == (
        {r: f"X is not a sparse matrix: bench measures {r} on sparse X" for r in
         ("sparse_dataset-zarrs", "sparse_dataset-zarr", "read_lazy")} if dense else {}
    )  # fmt: skip
