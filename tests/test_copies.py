"""Dual CSR/CSC stores: the copy is right, plain anndata ignores it, staleness is caught."""

from __future__ import annotations

import tracemalloc
import warnings

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from anndata.tests.helpers import assert_equal
from hypothesis import given, settings
from hypothesis import strategies as st

import annlayout
from annlayout.write.copies import (
    copy_group,
    indptr_checksum,
    read_record,
    stale_reason,
    transposed_indptr,
    transposed_ranges,
)
from annlayout.write.whole_chunks import WholeChunkWriter

from .conftest import full_adata, read_any
from .test_stream import make_input

DUAL = {"match": {"path": "X"}, "chunks": {"elements": 400}, "orientations": ["csr", "csc"]}


def dual(fmt: str = "zarr", **extra) -> annlayout.Layout:
    target = {"format": "h5ad"} if fmt == "h5ad" else {"format": "zarr", "zarr_format": 3}
    rule = {**DUAL, **extra}
    if fmt == "zarr":
        rule.setdefault("shards", {"chunks": 4})
    codecs = [{"name": "gzip", "level": 1}] if fmt == "h5ad" else [{"name": "zstd", "level": 1}]
    return annlayout.Layout.model_validate(
        {"annlayout": 1, "name": "dual", "target": target, "defaults": {"codecs": codecs},
         "rules": [rule]}
    )  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 60),
    cols=st.integers(1, 40),
    density=st.floats(0, 1),
    budget=st.integers(12, 5000),
    block=st.integers(1, 300),
    seed=st.integers(0, 2**16),
)
def test_out_of_core_transpose_equals_scipy(rows, cols, density, budget, block, seed):
    X = sp.random(rows, cols, density=density, format="csr", dtype=np.float32, random_state=seed)
    new_indptr = transposed_indptr(X.indices, X.nnz, cols, read_block=block)
    data, major = np.zeros(X.nnz, np.float32), np.zeros(X.nnz, np.int64)
    position = 0
    for start, stop, d, m in transposed_ranges(
        X.data, X.indices, X.indptr, new_indptr, budget=budget, read_block=block
    ):
        assert start == position and stop - start == d.size
        data[start:stop], major[start:stop] = d, m
        position = stop
    assert position == X.nnz
    expected = X.tocsc()
    expected.sort_indices()
    np.testing.assert_array_equal(new_indptr, expected.indptr)
    np.testing.assert_array_equal(major, expected.indices)
    np.testing.assert_array_equal(data, expected.data)


def test_whole_chunk_writer_writes_each_unit_once():
    writes = []

    class Recorder(np.ndarray):
        def __setitem__(self, key, value):
            writes.append((key.start, key.stop))
            super().__setitem__(key, value)

    target = np.zeros(103).view(Recorder)
    writer = WholeChunkWriter(target, 10, np.float64)
    for piece in np.array_split(np.arange(103.0), 7):
        writer.write(piece)
    writer.close()
    np.testing.assert_array_equal(np.asarray(target), np.arange(103.0))
    assert all(start % 10 == 0 for start, _ in writes)
    assert [stop - start for start, stop in writes][:-1] == [
        (stop - start) for start, stop in writes
    ][:-1]
    assert writes[-1][1] == 103


def test_whole_chunk_writer_converts_and_writes_one_span_at_a_time():
    """A transpose pass hands the writer hundreds of MB: converting or joining it whole, or
    writing several shards in one call, held multiples of what the memory model counts
    (1.6 GB peak RSS at --memory 1GiB), and a view of the tail kept the pass alive."""
    writes = []

    class Recorder(np.ndarray):
        def __setitem__(self, key, value):
            writes.append(key.stop - key.start)
            super().__setitem__(key, value)

    values = np.arange(100_000, dtype=np.int64)
    target = np.zeros(100_000, dtype=np.int32).view(Recorder)
    writer = WholeChunkWriter(target, 1000, np.int32, span=2000)
    tracemalloc.start()
    writer.write(values[:55_500])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert max(writes) == 2000 and sum(writes) == 55_000
    assert peak < 3 * 2000 * 4  # one converted span and the tail, not 55,500 x 8 bytes
    assert not np.shares_memory(writer.pending[0], values)
    writer.write(values[55_500:])
    writer.close()
    np.testing.assert_array_equal(np.asarray(target), values)


def _copy_matches(path) -> None:
    root = h5py.File(path, "r") if str(path).endswith(".h5ad") else zarr.open_group(path, mode="r")
    element = root["X"]
    copy = copy_group(element)
    assert copy is not None and copy.name.endswith("/csc")
    primary = sp.csr_matrix(
        (element["data"][...], element["indices"][...], element["indptr"][...]),
        shape=tuple(element.attrs["shape"]),
    )
    other = sp.csc_matrix(
        (copy["data"][...], copy["indices"][...], copy["indptr"][...]), shape=primary.shape
    )
    assert (primary != other).nnz == 0
    assert stale_reason(element, copy) is None
    assert read_record(copy)["indptr_sha256"] == indptr_checksum(primary.indptr)


def _read_every_way(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = read_any(path)
        backed = ad.read_h5ad(path, backed="r") if str(path).endswith(".h5ad") else None
        group = (
            h5py.File(path, "r") if str(path).endswith(".h5ad") else zarr.open_group(path, mode="r")
        )
        dataset = ad.io.sparse_dataset(group["X"])
        lazy = ad.experimental.read_lazy(group)
        return full, backed, dataset, lazy


@pytest.mark.parametrize("fmt", ["zarr", "h5ad"])
@pytest.mark.parametrize("how", ["write", "stream"])
def test_anndata_reads_a_dual_store_as_a_single_one(tmp_path, fmt, how):
    suffix = ".h5ad" if fmt == "h5ad" else ".zarr"
    single_layout = dual(fmt, orientations=["csr"])
    if how == "write":
        adata = full_adata()
        annlayout.write(adata, tmp_path / f"dual{suffix}", dual(fmt))
        annlayout.write(adata, tmp_path / f"single{suffix}", single_layout)
    else:
        source = tmp_path / "in.h5ad"
        adata = make_input(source, "csr")
        kw = {"memory": "256KiB", "small_element": 0}
        annlayout.apply(dual(fmt), source, tmp_path / f"dual{suffix}", **kw)
        annlayout.apply(single_layout, source, tmp_path / f"single{suffix}", **kw)
    dual_path, single_path = tmp_path / f"dual{suffix}", tmp_path / f"single{suffix}"
    _copy_matches(dual_path)
    got, want = _read_every_way(dual_path), _read_every_way(single_path)
    assert_equal(got[0], want[0])
    assert_equal(got[0], adata)
    if fmt == "h5ad":
        assert (got[1].X[:] != want[1].X[:]).nnz == 0
    assert (got[2][:] != want[2][:]).nnz == 0
    assert (got[2][5:40] != want[2][5:40]).nnz == 0
    assert (got[3].X.compute() != want[3].X.compute()).nnz == 0
    assert annlayout.verify(single_path, dual_path) == []


def test_csc_primary_out_of_core(tmp_path):
    source = tmp_path / "in.h5ad"
    adata = make_input(source, "csr")
    layout = dual(orientations=["csc"])
    out = tmp_path / "csc.zarr"
    result = annlayout.apply(layout, source, out, memory="256KiB", small_element=0)
    assert result.verified
    assert zarr.open_group(out)["X"].attrs["encoding-type"] == "csc_matrix"
    back = ad.read_zarr(out)
    assert back.X.format == "csc" and (back.X != adata.X).nnz == 0


def test_plan_and_inspect_show_both_copies(tmp_path):
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    out = tmp_path / "dual.zarr"
    annlayout.apply(dual(), source, out, small_element=0)
    x = annlayout.survey(out).element("X")
    assert {a.name for a in x.arrays} == {
        "data", "indices", "indptr", "csc/data", "csc/indices", "csc/indptr"
    }  # fmt: skip
    planned = annlayout.plan(dual(), source).element("X")
    stored = {a.name: a for a in x.arrays}
    for array in planned.copy_arrays:
        assert stored[array.name].chunks == array.chunks
        assert stored[array.name].shards == array.shards


def test_stale_copy_is_reported_by_verify(tmp_path):
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    out = tmp_path / "dual.zarr"
    annlayout.apply(dual(), source, out)
    # rewrite the primary's indptr as another tool would, leaving the copy as it was
    element = zarr.open_group(out, mode="r+", use_consolidated=False)["X"]
    indptr = element["indptr"][...]
    indptr[1:-1] = indptr[1:-1] - 1
    element["indptr"][...] = indptr
    problems = annlayout.verify(source, out)
    assert "X/csc: stale copy: the primary's indptr changed after the copy was written" in problems


@pytest.mark.parametrize("small_element", [0, "16MiB"])  # streamed, and through the callback
def test_copy_index_dtype_fits_its_own_minor_axis(tmp_path, small_element):
    source = tmp_path / "in.h5ad"
    adata = make_input(source, "csr")  # 400 cells x 150 genes
    out = tmp_path / "dual.zarr"
    result = annlayout.apply(
        dual(index_dtype="minimal"), source, out, memory="256KiB", small_element=small_element
    )
    assert result.verified
    group = zarr.open_group(out)["X"]
    assert group["indices"].dtype == np.int32 and group["csc/indices"].dtype == np.int32
    _copy_matches(out)
    assert (annlayout.open(out).X[:, [3, 140]] != adata.X[:, [3, 140]]).nnz == 0


def _no_whole_sparse_reads(monkeypatch):
    """verify may read small elements whole, never a sparse matrix."""
    import anndata.io

    real = anndata.io.read_elem

    def read_elem(node):
        if dict(node.attrs).get("encoding-type") in ("csr_matrix", "csc_matrix"):
            raise AssertionError(f"{node.name}: a sparse matrix was read whole")
        return real(node)

    monkeypatch.setattr(anndata.io, "read_elem", read_elem)


def test_verify_compares_another_orientation_out_of_core(tmp_path, monkeypatch):
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    out = tmp_path / "csc.zarr"
    annlayout.apply(dual(orientations=["csc"]), source, out, small_element=0, verify=False)
    _no_whole_sparse_reads(monkeypatch)  # the old verify read both matrices with read_elem
    assert annlayout.verify(source, out, memory="64KiB") == []
    assert annlayout.verify(out, source, memory="64KiB") == []  # and the other way round
    element = zarr.open_group(out, mode="r+", use_consolidated=False)["X"]
    data = element["data"][...]
    data[-1] += 1
    element["data"][...] = data
    assert annlayout.verify(source, out, memory="64KiB") == ["X/data: does not match the input"]


def test_verify_of_another_orientation_ignores_the_order_within_a_column(tmp_path, monkeypatch):
    source, other = tmp_path / "in.h5ad", tmp_path / "csc.h5ad"
    adata = make_input(source, "csr")
    X = adata.X.tocsc()
    rng = np.random.default_rng(0)
    for j in range(X.shape[1]):  # shuffle each column's entries: the same matrix
        lo, hi = X.indptr[j], X.indptr[j + 1]
        order = lo + rng.permutation(hi - lo)
        X.indices[lo:hi], X.data[lo:hi] = X.indices[order], X.data[order]
    X.has_sorted_indices = False
    adata.X = X
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_h5ad(other)
    with h5py.File(other) as f:  # still unsorted as stored
        assert np.any(np.diff(f["X/indices"][: X.indptr[1]].astype(int)) < 0)
    _no_whole_sparse_reads(monkeypatch)
    assert annlayout.verify(source, other, memory="64KiB") == []


def test_verify_of_another_orientation_holds_a_pass_and_its_range_read_back():
    """Reads in flight, a pass of the transpose and the stored range it is compared with stay
    within the reads' share and twice the pass budget (the model gives passes three times):
    the stored int32 indices compared as stored, where an int64 copy of them took as much
    again as the pass's own majors (7.6 MB here, 5.5 MB now, 6.2 MB allowed)."""
    from annlayout.planning.memory import READ_BYTES_PER_NONZERO, transpose_fixed, verify_sizes
    from annlayout.verify.compare import compare_transposed

    matrix = sp.random(3000, 400, density=0.3, format="csr", dtype=np.float32, random_state=0)
    a = {"data": matrix.data, "indices": matrix.indices, "indptr": matrix.indptr}
    other = matrix.tocsc()
    b = {"data": other.data, "indices": other.indices.astype(np.int32), "indptr": other.indptr}
    memory = 8 << 20
    _, sizes = verify_sizes(memory, fixed=transpose_fixed(3001, 400))
    assert matrix.nnz * 12 > 1.5 * sizes.pass_budget  # more than one pass
    tracemalloc.start()
    problem = compare_transposed(a, b, memory)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert problem is None
    assert peak <= READ_BYTES_PER_NONZERO * sizes.read_block + 2 * sizes.pass_budget
