"""Var alignment and row remapping against anndata.concat, on generated collections whose
files differ in genes and gene order (annlayout generate --files)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from annlayout.combine.buckets import RowBuckets, equal_edges
from annlayout.combine.collection import (
    column_maps,
    grouped,
    is_monotonic,
    mixing,
    remap_rows,
    reorder_csr,
    window_entropy,
)
from annlayout.generate.synthetic import collection_sizes, make_dataset, make_part


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


def test_reorder_csr_takes_rows_in_order():
    matrix = sp.random(40, 9, density=0.3, format="csr", random_state=2)
    order = np.random.default_rng(0).permutation(40)
    ptr, idx, val = reorder_csr(matrix.indptr, matrix.indices, matrix.data, order)
    got = sp.csr_matrix((val, idx, ptr), shape=matrix.shape)
    assert (got != matrix[order]).nnz == 0


def test_grouped_is_stable_with_categories_in_their_order_and_missing_last():
    values = pd.Series(pd.Categorical(["b", "a", None, "b", "a"], categories=["b", "a"]))
    assert list(grouped(values)) == [0, 3, 1, 4, 2]
    assert list(grouped(pd.Series([3.0, np.nan, 1.0, 3.0]))) == [2, 0, 3, 1]


def test_window_entropy_tells_end_to_end_from_shuffled():
    blocks = np.repeat(np.arange(4), 1024)
    assert window_entropy(blocks) == 0.0
    observed, uniform = mixing(np.random.default_rng(1).permutation(blocks))
    assert abs(observed - uniform) < 0.05 and 1.9 < uniform <= 2.0
    assert mixing(blocks)[0] < 0.01


@pytest.mark.parametrize("rows_per_bucket", [1, 7, 1000])
def test_row_buckets_deliver_every_row_at_its_new_place(tmp_path, rows_per_bucket):
    matrix = sp.random(300, 20, density=0.2, format="csr", random_state=4, dtype=np.float32)
    order = np.random.default_rng(3).permutation(300)
    rank = np.empty_like(order)
    rank[order] = np.arange(300)
    buckets = RowBuckets(tmp_path / "b", equal_edges(300, rows_per_bucket))
    for start in range(0, 300, 64):
        block = matrix[start : start + 64]
        buckets.add_csr(rank[start : start + 64], block.indptr, block.indices, block.data)
    parts = []
    for number, (p, i, v) in enumerate(buckets.drain_csr()):
        parts.append(sp.csr_matrix((v, i, p), shape=(p.size - 1, 20)))
        buckets.discard(number)
    assert (sp.vstack(parts) != matrix[order]).nnz == 0
    assert list(buckets.files()) == ["rows.bin"]  # the values given back as they were written
    dense = RowBuckets(tmp_path / "d", equal_edges(300, rows_per_bucket))
    for start in range(0, 300, 64):
        dense.add_dense(rank[start : start + 64], matrix[start : start + 64].toarray())
    np.testing.assert_array_equal(np.vstack(list(dense.drain_dense())), matrix[order].toarray())


@pytest.mark.parametrize("rows_per_bucket", [1, 7, 1000])
@pytest.mark.parametrize("killed_after", [0, 2, 4])
def test_row_buckets_resume_from_a_checkpoint(tmp_path, rows_per_bucket, killed_after):
    """A run killed after block ``killed_after`` was checkpointed (and one more block was
    half on disk) continues from the checkpoint and gives every row once, in its place."""
    matrix = sp.random(300, 20, density=0.2, format="csr", random_state=5, dtype=np.float64)
    rank = np.random.default_rng(6).permutation(300)
    starts = range(0, 300, 64)
    edges = equal_edges(300, rows_per_bucket)
    killed = RowBuckets(tmp_path / "b", edges)
    for number, start in enumerate(starts):
        block = matrix[start : start + 64]
        ranks = rank[start : start + 64]
        killed.add_csr(ranks, block.indptr, block.indices, block.data.astype(np.float32))
        if number == killed_after:
            checkpoint, dtypes = killed.files(), killed.dtypes
        if number == killed_after + 1:
            break  # written after the checkpoint: cut off on resuming
    resumed = RowBuckets(tmp_path / "b", edges, restore=checkpoint, dtypes=dtypes)
    for start in starts[killed_after + 1 :]:
        block = matrix[start : start + 64]
        ranks = rank[start : start + 64]
        resumed.add_csr(ranks, block.indptr, block.indices, block.data.astype(np.float32))
    parts = [sp.csr_matrix((v, i, p), shape=(p.size - 1, 20)) for p, i, v in resumed.drain_csr()]
    order = np.argsort(rank)
    assert (sp.vstack(parts) != matrix[order].astype(np.float32)).nnz == 0


def test_single_datasets_and_collection_parts_combine():
    """What generate writes, alone or with --files, has one X_pca width and one gene
    universe: concat and append take them together."""
    single = make_dataset(30, 40, nnz_per_cell=5, seed=1)
    part = make_part(0, 20, 40, nnz_per_cell=5, seed=2)
    empty = make_dataset(0, 40, nnz_per_cell=5)
    assert single.obsm["X_pca"].shape[1] == part.obsm["X_pca"].shape[1]
    assert empty.shape == (0, 40) and empty.obsm["X_pca"].shape == (
        0,
        single.obsm["X_pca"].shape[1],
    )
    assert set(part.var_names) <= set(single.var_names)
    combined = ad.concat([single, part, empty], join="outer", index_unique="-")
    assert combined.obsm["X_pca"].shape == (50, single.obsm["X_pca"].shape[1])


@pytest.mark.parametrize(("cells", "files"), [(2, 3), (5, 0)])
def test_a_collection_needs_a_file_and_a_cell_a_file(cells, files):
    with pytest.raises(ValueError, match=f"--files {files}"):
        collection_sizes(cells, files)
