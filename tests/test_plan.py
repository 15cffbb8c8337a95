"""Planning is pure: these tests build surveys by hand and never touch disk."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from annlayout.layout.spec import Layout, load_layout
from annlayout.planning.plan import INDPTR_CHUNK, PlanError, make_plan
from annlayout.planning.survey_models import ArrayInfo, ElementInfo, Survey

from .conftest import SHIPPED


def layout(rules=(), defaults=None, target=None) -> Layout:
    data = {"annlayout": 1, "name": "t", "rules": list(rules)}
    if defaults:
        data["defaults"] = defaults
    if target:
        data["target"] = target
    return Layout.model_validate(data)


def sparse(path="X", shape=(50_000, 20_000), nnz=45_000_000, encoding="csr_matrix") -> ElementInfo:
    major = shape[0] if encoding == "csr_matrix" else shape[1]
    return ElementInfo(
        path=path,
        encoding=encoding,
        shape=shape,
        nnz=nnz,
        dtype="f4",
        arrays=[
            ArrayInfo(name="data", shape=(nnz,), dtype="f4", itemsize=4),
            ArrayInfo(name="indices", shape=(nnz,), dtype="i4", itemsize=4),
            ArrayInfo(name="indptr", shape=(major + 1,), dtype="i8", itemsize=8),
        ],
    )


def dense(path, shape, dtype="f4", itemsize=4, encoding="array") -> ElementInfo:
    return ElementInfo(
        path=path, encoding=encoding, shape=shape, dtype=dtype,
        arrays=[ArrayInfo(name="", shape=shape, dtype=dtype, itemsize=itemsize)],
    )  # fmt: skip


def survey(*elements) -> Survey:
    return Survey(source="test", format="memory", elements=list(elements))


def test_major_chunks_are_rows_worth_of_nonzeros():
    plan = make_plan(
        layout([{"match": {"path": "X"}, "chunks": {"major": 64}, "shards": {"bytes": "256MiB"}}]),
        survey(sparse()),
    )
    x = plan.element("X")
    data, indices, indptr = x.arrays
    assert data.chunks == (math.ceil(64 * 45_000_000 / 50_000),) == (57_600,)
    assert indices.chunks == data.chunks  # aligned boundaries
    assert data.shards[0] % data.chunks[0] == 0
    per_shard = min(256 * 2**20 // (57_600 * 4), math.ceil(45_000_000 / 57_600))
    assert data.shards[0] == 57_600 * per_shard == 45_043_200  # one shard: the whole array
    assert data.n_objects == math.ceil(45_000_000 / data.shards[0])
    assert indptr.chunks == (50_001,) and indptr.shards == (50_001,)
    assert x.rule == 0 and x.orientation == "csr" and x.copies == []


def test_shards_never_exceed_the_array_rounded_to_chunks():
    plan = make_plan(
        layout(
            [{"match": {"path": "X"}, "chunks": {"elements": 1000}, "shards": {"bytes": "1GiB"}}]
        ),
        survey(sparse(nnz=12_345)),
    )
    data = plan.element("X").arrays[0]
    assert data.chunks == (1000,)
    assert data.shards == (13_000,)
    assert data.n_objects == 1


def test_dense_rows_elements_bytes_and_explicit_shape():
    rules = [
        {"match": {"path": "obsm/a"}, "chunks": {"rows": 100}},
        {"match": {"path": "obsm/b"}, "chunks": {"elements": 5_000}},
        {"match": {"path": "obsm/c"}, "chunks": {"bytes": "40KB"}},
        {"match": {"path": "obsm/d"}, "chunks": [300, -1]},
        {"match": {"path": "obsm/e"}, "chunks": [300, 10]},
    ]
    elements = [dense(f"obsm/{n}", (1000, 50)) for n in "abcde"]
    plan = make_plan(layout(rules), survey(*elements))
    chunks = {e.path[-1]: e.arrays[0].chunks for e in plan.elements}
    assert chunks == {
        "a": (100, 50),
        "b": (100, 50),
        "c": (200, 50),
        "d": (300, 50),
        "e": (300, 10),
    }
    assert plan.element("obsm/e").arrays[0].n_chunks == 4 * 5


def test_chunks_no_larger_than_the_data():
    plan = make_plan(
        layout([{"match": {"path": "*"}, "chunks": {"rows": 10**9}}]), survey(dense("x", (7, 3)))
    )
    assert plan.elements[0].arrays[0].chunks == (7, 3)


def test_two_d_chunks_on_one_d_array_use_the_first_axis_and_warn():
    plan = make_plan(layout(defaults={"chunks": [64, 64]}), survey(dense("obs/x", (1000,))))
    array = plan.elements[0].arrays[0]
    assert array.chunks == (64,)
    assert any("has 2 axes" in w for w in array.warnings)


def test_scalars_and_empty_arrays_get_nothing():
    lay = layout(defaults={"shards": {"bytes": "1GiB"}, "chunks": {"rows": 10}})
    plan = make_plan(
        lay, survey(dense("uns/s", (), "i8", 8, "numeric-scalar"), dense("obs/e", (0,)))
    )
    scalar, empty = (e.arrays[0] for e in plan.elements)
    assert (scalar.chunks, scalar.shards, scalar.codecs) == (None, None, "none")
    assert (empty.chunks, empty.shards, empty.n_objects) == ((1,), None, 0)


def test_no_shards_for_zarr_v2_or_h5ad_targets():
    for target in ({"format": "h5ad"}, {"format": "zarr", "zarr_format": 2}):
        lay = layout(defaults={"chunks": {"rows": 10}}, target=target)
        plan = make_plan(lay, survey(dense("obsm/x", (1000, 4))))
        assert plan.elements[0].arrays[0].shards is None


def test_shards_as_chunk_multiples_and_explicit_shape():
    rules = [
        {"match": {"path": "a"}, "chunks": {"rows": 10}, "shards": {"chunks": 4}},
        {"match": {"path": "b"}, "chunks": {"rows": 10}, "shards": [35, 4]},
    ]
    plan = make_plan(layout(rules), survey(dense("a", (1000, 4)), dense("b", (1000, 4))))
    assert plan.element("a").arrays[0].shards == (40, 4)
    b = plan.element("b").arrays[0]
    assert b.shards == (40, 4)  # rounded up to a multiple of the chunks
    assert any("rounded up" in w for w in b.warnings)


def test_index_dtypes():
    def dtypes(policy, **kw):
        plan = make_plan(layout(defaults={"index_dtype": policy}), survey(sparse(**kw)))
        return [a.dtype for a in plan.element("X").arrays]

    assert dtypes("keep") == ["f4", "i4", "i8"]
    # minimal: the types scipy indexes with, never uint8/uint16 (scipy mis-indexes them)
    assert dtypes("minimal") == ["f4", "i4", "i4"]
    assert dtypes("minimal", shape=(10, 200), nnz=2000) == ["f4", "i4", "i4"]
    assert dtypes("minimal", nnz=3_000_000_000) == ["f4", "i4", "i8"]
    assert dtypes("int64") == ["f4", "i8", "i8"]
    with pytest.raises(PlanError, match="X: index_dtype int32 cannot hold 3,000,000,000"):
        dtypes("int32", nnz=3_000_000_000)


def test_orientations_plan_a_second_copy_and_csc_primary():
    rules = [{"match": {"path": "X"}, "chunks": {"major": 256}, "orientations": ["csr", "csc"]}]
    x = make_plan(layout(rules), survey(sparse())).element("X")
    assert x.orientation == "csr" and x.copies == ["csc"]
    assert [a.name for a in x.copy_arrays] == ["csc/data", "csc/indices", "csc/indptr"]
    # 256 genes of nonzeros per chunk in the copy: 256 * 45M / 20,000
    assert x.copy_arrays[0].chunks == (576_000,)
    assert x.copy_arrays[2].shape == (20_001,)

    own = [{**rules[0], "copy": {"chunks": {"major": 32}, "codecs": [{"name": "gzip"}]}}]
    copy = make_plan(layout(own), survey(sparse())).element("X").copy_arrays
    assert copy[0].chunks == (72_000,) and copy[0].codecs == "gzip(4)"
    assert make_plan(layout(own), survey(sparse())).element("X").arrays[0].codecs == "zstd(3)"

    csc = make_plan(layout([{**rules[0], "orientations": ["csc"]}]), survey(sparse())).element("X")
    assert csc.orientation == "csc" and not csc.copy_arrays
    assert csc.arrays[2].shape == (20_001,)


def test_default_orientation_keeps_the_input():
    x = make_plan(layout(), survey(sparse(encoding="csc_matrix"))).element("X")
    assert x.orientation == "csc"


def test_warnings_small_large_many_and_unmatched():
    rules = [
        {"match": {"path": "small"}, "chunks": {"elements": 256}},
        {"match": {"path": "large"}, "chunks": {"bytes": "128MiB"}},
        {"match": {"path": "nothing/*"}, "chunks": {"rows": 1}},
    ]
    plan = make_plan(
        layout(rules), survey(dense("small", (10_000_000,)), dense("large", (100_000_000,)))
    )
    text = "\n".join(plan.all_warnings())
    assert "small: 39,063 chunks of 1.0 KiB, under 64 KiB" in text and "50x slower" in text
    assert "chunks: {elements: 16,384} makes them 64 KiB" in text
    assert "small: 39,063 objects in one array" in text
    assert "large: chunks of 128.0 MiB are over 64 MiB" in text
    assert "rule 2 (rules[2]) matched no element" in text


def test_small_chunks_warn_where_many_and_say_how_to_fix():
    """16 cells per chunk (ml-minibatch before its re-tune for training) on pbmc's shape
    (765 genes, ~249 nonzeros per cell in raw/X): no warning for its 700 cells (44 chunks an
    array), a warning with the setting that makes 64 KiB chunks for 68,000 (4,250); data and
    indices warn once, as a pair. ml-minibatch's 64 cells make chunks over 64 KiB there."""
    ml = layout(
        [
            {"match": {"path": "X"}, "chunks": {"rows": 16}},
            {"match": {"path": "raw/X"}, "chunks": {"major": 16}, "index_dtype": "minimal"},
        ]
    )

    def pbmc_like(cells: int) -> Survey:
        return survey(
            dense("X", (cells, 765)), sparse("raw/X", shape=(cells, 765), nnz=cells * 249)
        )

    # pbmc_like has no obsm: the shipped rule for it matching nothing is no mistake
    assert make_plan(ml, pbmc_like(700)).all_warnings() == []
    warned = [w for w in make_plan(ml, pbmc_like(68_000)).all_warnings() if "64 KiB" in w]
    assert warned == [
        "X: 4,250 chunks of 47.8 KiB, under 64 KiB: each costs a request and an index entry "
        "whatever its size; chunks: {rows: 22} makes them 64 KiB",
        "raw/X/data: 4,250 chunks (data and indices together) of 31.1 KiB, under 64 KiB: each "
        "costs a request and an index entry whatever its size; chunks: {major: 33} makes them "
        "64 KiB",
    ]
    advised = [
        {"match": {"path": "X"}, "chunks": {"rows": 22}},
        {"match": {"path": "raw/X"}, "chunks": {"major": 33}, "index_dtype": "minimal"},
    ]
    assert not make_plan(layout(advised), pbmc_like(68_000)).all_warnings()
    shipped = make_plan(load_layout("ml-minibatch"), pbmc_like(68_000)).all_warnings()
    assert not [w for w in shipped if "64 KiB" in w]


def test_small_arrays_in_one_chunk_do_not_warn():
    plan = make_plan(layout(), survey(dense("obs/n", (100,))))
    assert plan.all_warnings() == []


def test_anndata_guide_recipe_is_flagged():
    # the zarr-v3 guide's recipe: 2^8-element chunks in 2^16-element shards
    rules = [{"match": {"path": "X"}, "chunks": {"elements": 256}, "shards": {"chunks": 256}}]
    plan = make_plan(layout(rules), survey(sparse()))
    assert any("under 64 KiB" in w for w in plan.all_warnings())


def test_every_shipped_layout_plans_a_typical_dataset():
    elements = [
        sparse(),
        dense("obsm/X_pca", (50_000, 50)),
        dense("obs/total", (50_000,)),
        dense("uns/x", (), "i8", 8, "numeric-scalar"),
    ]
    for name in SHIPPED:
        plan = make_plan(load_layout(name), survey(*elements))
        for element in plan.elements:
            for array in element.arrays:
                if array.chunks and array.shards:
                    assert all(s % c == 0 for s, c in zip(array.shards, array.chunks, strict=True))
        data = plan.element("X").arrays[0]
        # never so small that per-chunk costs dominate (ml-minibatch: 64 cells, ~230 KB)
        assert 32 << 10 <= data.chunk_bytes <= 64 << 20, name


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 10**7),
    width=st.integers(1, 64),
    rows=st.integers(1, 10**6),
    shard_bytes=st.integers(1, 2**31),
)
def test_chunk_and_shard_invariants(n, width, rows, shard_bytes):
    lay = layout(
        [{"match": {"path": "a"}, "chunks": {"rows": rows}, "shards": {"bytes": shard_bytes}}]
    )
    array = make_plan(lay, survey(dense("a", (n, width)))).elements[0].arrays[0]
    assert 1 <= array.chunks[0] <= n and array.chunks[1] == width
    assert array.shards[0] % array.chunks[0] == 0
    assert array.shards[0] - array.chunks[0] < n  # never a whole spare chunk beyond the data
    assert array.n_objects == math.ceil(n / array.shards[0])


def test_indptr_chunking_caps_at_one_mebi_entries():
    x = make_plan(layout(), survey(sparse(shape=(3_000_000, 100), nnz=10_000_000))).element("X")
    assert x.arrays[2].chunks == (INDPTR_CHUNK,)
