"""annlayout.open: selections on either axis equal a dense in-memory reference."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import annlayout
from annlayout.base.errors import NotAnnDataError
from annlayout.reading.reader import StaleCopyWarning

from .test_copies import dual
from .test_stream import make_input


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    source = root / "in.h5ad"
    adata = make_input(source, "csr", seed=7)
    out = {"plain-h5ad": source}
    for name, layout in {
        "dual-zarr": dual(),
        "dual-h5ad": dual("h5ad"),
        "single-zarr": dual(orientations=["csr"]),
        "csc-zarr": dual(orientations=["csc"]),
    }.items():
        path = root / (name + (".h5ad" if name.endswith("h5ad") else ".zarr"))
        annlayout.apply(layout, source, path, small_element=0)
        out[name] = path
    return adata, out


def selectors(n: int, names: list[str]):
    return st.one_of(
        st.integers(-n, n - 1),
        st.builds(
            slice,
            st.none() | st.integers(-n, n),
            st.none() | st.integers(-n, n),
            st.none() | st.integers(1, 7),
        ),
        st.lists(st.booleans(), min_size=n, max_size=n).map(np.array),
        st.lists(st.integers(0, n - 1), max_size=30).map(lambda v: np.array(v, dtype=np.int64)),
        st.lists(st.sampled_from(names), min_size=1, max_size=10),
    )


def reference(dense: np.ndarray, obs, var, rows, cols) -> np.ndarray:
    def pos(key, index):
        if isinstance(key, list) and key and isinstance(key[0], str):
            return index.get_indexer(key)
        if isinstance(key, int | np.integer):
            return [key]
        return key

    return dense[pos(rows, obs)][:, pos(cols, var)]


@pytest.mark.parametrize(
    "store", ["plain-h5ad", "dual-zarr", "dual-h5ad", "single-zarr", "csc-zarr"]
)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_selections_equal_a_dense_reference(stores, store, data):
    adata, paths = stores
    handle = annlayout.open(paths[store])
    rows = data.draw(selectors(adata.n_obs, list(adata.obs_names[:50])))
    cols = data.draw(selectors(adata.n_vars, list(adata.var_names[:50])))
    got = handle.X[rows, cols]
    assert sp.issparse(got) and got.format == "csr"
    expected = reference(adata.X.toarray(), adata.obs_names, adata.var_names, rows, cols)
    np.testing.assert_array_equal(got.toarray(), np.atleast_2d(expected))


def test_orientation_is_chosen_by_bytes(stores):
    _, paths = stores
    x = annlayout.open(paths["dual-zarr"]).X
    everything = np.arange(x.shape[0])
    assert x.choose(everything, np.array([3, 9])) == "csc"  # a few genes in every cell
    assert x.choose(np.array([1, 2, 3]), np.arange(x.shape[1])) == "csr"  # a few cells
    assert annlayout.open(paths["single-zarr"]).X.choose(everything, np.array([3])) == "csr"


def test_dense_elements_obs_var_and_to_adata(stores):
    adata, paths = stores
    handle = annlayout.open(paths["dual-zarr"])
    assert handle.shape == adata.shape
    np.testing.assert_array_equal(
        handle.obsm["X_pca"][[5, 1, 5], :], adata.obsm["X_pca"][[5, 1, 5]]
    )
    np.testing.assert_array_equal(handle.obs["score"].to_numpy(), adata.obs["score"].to_numpy())
    assert (handle.layers["counts"][10:20, :] != adata.layers["counts"][10:20]).nnz == 0
    sub = handle.to_adata(obs=[3, 1, 4], var=slice(0, 7))
    assert sub.shape == (3, 7)
    assert list(sub.obs_names) == list(adata.obs_names[[3, 1, 4]])
    np.testing.assert_array_equal(sub.X.toarray(), adata.X[[3, 1, 4]][:, :7].toarray())
    np.testing.assert_array_equal(sub.obsm["X_pca"], adata.obsm["X_pca"][[3, 1, 4]])
    with pytest.raises(KeyError, match="not in the index"):
        handle.X[["no-such-cell"], :]


@pytest.mark.parametrize("store", ["plain-h5ad", "dual-zarr"])
def test_positions_and_slices_read_no_names(stores, store):
    """A slice, integers or a mask need only the axis lengths: on object storage a million
    cell names are megabytes and round trips before the first byte of X."""
    adata, paths = stores
    handle = annlayout.open(paths[store])
    assert len(handle.obs) == adata.n_obs and len(handle.var) == adata.n_vars
    block = handle.X[10:20, [0, 3]]
    mask = np.zeros(adata.n_obs, bool)
    mask[[1, 4]] = True
    handle.X[mask, -1]
    assert "index" not in vars(handle.obs) and "index" not in vars(handle.var)
    np.testing.assert_array_equal(block.toarray(), adata.X[10:20][:, [0, 3]].toarray())
    handle.X[[adata.obs_names[2]], :]  # names: now the index is read
    assert "index" in vars(handle.obs)


def test_stale_copy_warns_and_reads_the_primary(tmp_path):
    source = tmp_path / "in.h5ad"
    adata = make_input(source, "csr")
    out = tmp_path / "dual.zarr"
    annlayout.apply(dual(), source, out)
    # another tool rewrites the primary (moves one nonzero from cell 0 to cell 1)
    group = zarr.open_group(out, mode="r+", use_consolidated=False)["X"]
    indptr = group["indptr"][...]
    indptr[1] -= 1
    group["indptr"][...] = indptr
    primary = sp.csr_matrix((group["data"][...], group["indices"][...], indptr), shape=adata.shape)
    with pytest.warns(StaleCopyWarning, match="ignoring its stale csc copy"):
        got = annlayout.open(out).X[:, [0, 1, 2]]
    np.testing.assert_array_equal(got.toarray(), primary[:, [0, 1, 2]].toarray())


def test_open_refuses_what_is_not_anndata(tmp_path):
    with pytest.raises(NotAnnDataError):
        annlayout.open(tmp_path / "missing.zarr")
