"""Var alignment and row remapping against anndata.concat, on generated collections whose
files differ in genes and gene order (annlayout generate --files)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from annlayout.datagen import make_part
from annlayout.rewrite.collection import column_maps, is_monotonic, remap_rows


@pytest.fixture(scope="module")
def parts():
    return [make_part(i, 120 + 10 * i, 60, nnz_per_cell=12, n_pcs=4, seed=3) for i in range(4)]


@pytest.mark.parametrize("join", ["inner", "outer"])
def test_remapped_rows_equal_anndata_concat(parts, join):
    reference = ad.concat(parts, join=join, index_unique="-")
    maps = column_maps(reference.var_names, [p.var_names for p in parts])
    assert not all(is_monotonic(m) for m in maps)  # the parts order their genes differently
    blocks = []
    for part, column_map in zip(parts, maps, strict=True):
        x = part.X.tocsr()
        indptr, indices, data = remap_rows(x.indptr, x.indices, x.data, column_map)
        block = sp.csr_matrix((data, indices, indptr), shape=(x.shape[0], reference.n_vars))
        assert block.has_sorted_indices
        blocks.append(block)
    combined = sp.vstack(blocks, format="csr")
    expected = sp.csr_matrix(reference.X)
    assert combined.shape == expected.shape and (combined != expected).nnz == 0


def test_monotonic_maps_skip_the_sort_and_agree():
    (first, second) = column_maps(
        pd.Index(["a", "c"]), [pd.Index(["a", "b", "c"]), pd.Index(["c", "a"])]
    )
    assert is_monotonic(first) and not is_monotonic(second)
    x = sp.csr_matrix(np.array([[1, 2, 3], [0, 5, 6]], dtype=np.float32))
    sorted_first = remap_rows(x.indptr, x.indices, x.data, first)
    assumed = remap_rows(x.indptr, x.indices, x.data, first, monotonic=True)
    for a, b in zip(sorted_first, assumed, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sorted_first[1], [0, 1, 1])  # b dropped


def test_duplicated_var_names_are_refused():
    with pytest.raises(ValueError, match="appears twice"):
        column_maps(pd.Index(["a"]), [pd.Index(["a", "a"])])
