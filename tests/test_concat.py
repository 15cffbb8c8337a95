"""annlayout concat against anndata.concat of the inputs read into memory: mixed formats,
differing genes and gene orders, differing categories, repeating obs names, layers, obsm."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from annlayout import concat
from annlayout.cli import main
from annlayout.datagen import make_part


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


@pytest.mark.parametrize("path", _corpus_readable(), ids=lambda p: p.name)
def test_concat_of_corpus_files_equals_anndata_concat(tmp_path, path):
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
    concat("analysis", [path, path], out, index_unique="-", merge="same")
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
