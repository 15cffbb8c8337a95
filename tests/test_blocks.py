"""The memory model is pure: hand-built surveys and plans, no disk."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from annlayout.base import defaults
from annlayout.layout.spec import load_layout
from annlayout.planning.memory import (
    DEFAULT_MEMORY,
    DEFAULT_VERIFY_MEMORY,
    DEFAULT_WHOLE_BELOW,
    MAX_VERIFY_BYTES,
    READ_BYTES_PER_NONZERO,
    memory_plan,
    parse_size,
    read_block,
    source_dtypes,
    streamable,
    transpose_fixed,
    verify_sizes,
    write_span,
)
from annlayout.planning.plan import make_plan
from annlayout.storage.commit import ApplyError

from .test_plan import dense, layout, sparse, survey

MiB = 1 << 20

SHARDED = [{"match": {"path": "X"}, "chunks": {"elements": 1 << 20}, "shards": {"chunks": 4}}]


def model(rules=SHARDED, elements=None, budget="1GiB", workers=1, small=0, target=None):
    s = survey(*(elements or [sparse(shape=(50_000, 20_000), nnz=45_000_000)]))
    plan = make_plan(layout(rules, target=target), s)
    return memory_plan(plan, source_dtypes(s), parse_size(budget), workers, small)


def test_defaults_are_one_set_of_values():
    assert DEFAULT_MEMORY == parse_size(defaults.MEMORY) == 2 << 30
    assert DEFAULT_VERIFY_MEMORY == parse_size(defaults.VERIFY_MEMORY) == 512 * MiB
    assert DEFAULT_WHOLE_BELOW == parse_size(defaults.WHOLE_BELOW) == 16 * MiB


def test_parse_size_names_the_option():
    assert parse_size("64KiB") == 65536 and parse_size(10) == 10
    with pytest.raises(ApplyError, match=r"^--whole-below 'lots': not a byte size"):
        parse_size("lots", "--whole-below")


def test_one_block_per_shard_sized_with_the_input_and_output_dtypes():
    m = model(rules=[{**SHARDED[0], "index_dtype": "minimal"}])
    x = m.element("X")
    data, indices = x.arrays  # indptr is written whole, not in blocks
    shard = 4 << 20  # 4 chunks of 1 Mi elements
    assert data.unit == indices.unit == shard
    assert data.n_blocks == math.ceil(45_000_000 / shard)
    assert data.peak == shard * (4 + 0 + 2 * 4)  # float32 read, no conversion, encoded
    assert indices.peak == shard * (4 + 0 + 2 * 4)  # int32 read, kept int32, encoded
    blocks = list(data.blocks())
    assert [b.start for b in blocks] == list(range(0, 45_000_000, shard))
    assert blocks[-1].stop == 45_000_000 and blocks[0].nbytes == shard * 4
    assert blocks[0].source_array == "X/data" and blocks[0].target_array == "X/data"
    assert x.peak == data.peak and not m.violations


def test_unsharded_blocks_take_as_many_chunks_as_fit():
    rules = [{"match": {"path": "X"}, "chunks": {"elements": 1 << 20}, "shards": "none"}]
    m = model(rules=rules, budget="64MiB")
    data = m.element("X").arrays[0]
    per_chunk = (1 << 20) * (4 + 2 * 4)
    assert data.unit == (64 * MiB // per_chunk) * (1 << 20) and data.peak <= 64 * MiB


def test_a_shard_larger_than_the_budget_per_worker_is_a_violation_naming_the_array():
    fits = model(budget="64MiB")
    assert not fits.violations
    shared = model(budget="64MiB", workers=2)  # 32 MiB each: a 4 Mi-element shard needs 48
    assert shared.per_worker == 32 * MiB
    assert shared.violations[0].startswith(
        "X/data: one shard is 16 MiB; writing it needs about 48 MiB"
    )
    with pytest.raises(ApplyError, match=r"^X/data: one shard .* \(and 1 more\)$"):
        shared.check()


def test_small_and_unstreamable_elements_are_copied_whole():
    elements = [
        sparse(shape=(100, 50), nnz=400),
        dense("obs/_index", (100_000,), dtype="string", itemsize=16),
        dense("obsm/X_pca", (100_000, 50)),
    ]
    m = model(elements=elements, small=1 << 14)
    assert [e.path for e in m.elements if e.streamed] == ["obsm/X_pca"]
    assert m.element("X").how == "whole" and m.element("obs/_index").how == "whole"
    assert m.element("obsm/X_pca").how == "blocks"


def test_orientation_change_is_a_transpose_sized_within_the_budget():
    rules = [{**SHARDED[0], "orientations": ["csc"]}]
    m = model(rules=rules, budget="256MiB")
    x = m.element("X")
    assert x.arrays == () and x.how == "transpose (csc)"
    (t,) = m.transposes
    assert t.group == "X" and t.orientation == "csc" and t.nnz == 45_000_000
    assert t.fixed == transpose_fixed(50_000, 20_000)
    assert t.sizes.read_block == read_block(256 * MiB) == 256 * MiB // 160
    assert t.sizes.pass_budget == (
        256 * MiB - t.writes - t.fixed - READ_BYTES_PER_NONZERO * t.sizes.read_block
    )
    assert t.n_passes == math.ceil(45_000_000 * 12 / t.sizes.pass_budget)
    assert t.peak <= 256 * MiB and not m.violations


def test_a_second_orientation_is_blocks_plus_a_transpose_of_the_copy_group():
    rules = [{**SHARDED[0], "orientations": ["csr", "csc"]}]
    x = model(rules=rules).element("X")
    assert [a.target for a in x.arrays] == ["X/data", "X/indices"]
    assert [t.group for t in x.transposes] == ["X/csc"]
    assert x.how == "blocks + transpose (csc)"


def test_a_transpose_whose_writers_leave_too_little_is_refused():
    rules = [{**SHARDED[0], "orientations": ["csc"]}]
    m = model(rules=rules, budget="40MiB")  # 3 x (16 + 16 MiB) of shard writers
    assert m.violations and m.violations[0].startswith("X: building the csc orientation")


def test_a_transpose_counts_the_span_its_writers_write_at_once():
    """Unsharded, a writer writes 16 MiB of whole chunks at once, not one chunk: the model
    counts that span (it counted one chunk)."""
    rules = [{"match": {"path": "X"}, "chunks": {"elements": 1 << 16}, "orientations": ["csc"]}]
    m = model(rules=rules, budget="1GiB")
    (t,) = m.transposes
    assert dict(t.spans) == {"data": 4 << 20, "indices": 4 << 20}
    assert t.writes == 3 * (16 * MiB + 16 * MiB)
    small = model(rules=rules, budget="2MiB").transposes[0]  # 1/16 of it: 128 KiB, one chunk
    assert dict(small.spans) == {"data": 1 << 16, "indices": 1 << 16}
    sharded = model(rules=[{**SHARDED[0], "orientations": ["csc"]}]).transposes[0]
    assert write_span(sharded.arrays["data"], 1 << 30) == 4 << 20  # one shard


def test_json_has_every_element():
    m = model(rules=[{**SHARDED[0], "orientations": ["csr", "csc"]}])
    data = m.to_json()
    assert data["budget_bytes"] == 1 << 30 and data["violations"] == []
    (x,) = data["elements"]
    assert x["blocks"] == m.element("X").n_blocks and x["transposes"][0]["group"] == "X/csc"


def test_streamable_matches_the_old_rule():
    s = survey(dense("obsm/a", (1000, 10)), dense("obs/s", (1000,), dtype="string", itemsize=16))
    plan = make_plan(layout(), s)
    assert streamable(plan.element("obsm/a"), 0) and not streamable(plan.element("obsm/a"), 1 << 20)
    assert not streamable(plan.element("obs/s"), 0)


def test_verify_sizes():
    block, sizes = verify_sizes(128 * MiB)
    assert block == 32 * MiB  # a quarter per side
    block, sizes = verify_sizes(512 * MiB)
    assert block == MAX_VERIFY_BYTES == 64 * MiB and sizes.read_block == 512 * MiB // 160
    assert sizes.pass_budget == (512 * MiB - 40 * sizes.read_block) // 3
    block, sizes = verify_sizes(1024)  # floors
    assert block == MiB and sizes.pass_budget == MiB and sizes.read_block == 1024


def test_every_shipped_layout_fits_its_default_budget_on_a_typical_dataset():
    typical = survey(sparse(), dense("obsm/X_pca", (50_000, 50)))
    for name in ("anndata-default", "ml-minibatch", "analysis", "cell-browser", "archive"):
        plan = make_plan(load_layout(name), typical)
        m = memory_plan(plan, source_dtypes(typical), DEFAULT_MEMORY)
        assert not m.violations, name
        assert all(e.peak <= DEFAULT_MEMORY for e in m.elements if e.streamed), name


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 100_000),
    nnz=st.integers(1, 10_000_000),
    chunk=st.integers(1, 1 << 20),
    shards=st.integers(1, 16),
    budget=st.integers(1 << 20, 1 << 32),
    workers=st.integers(1, 8),
)
def test_blocks_tile_the_arrays_and_fit_unless_reported(rows, nnz, chunk, shards, budget, workers):
    # up to 20,000 shards per array: more only adds Block objects (a million of them, for
    # 1-value chunks of 10M nonzeros, took minutes) and no case
    assume(nnz <= chunk * shards * 20_000)
    rules = [{"match": {"path": "X"}, "chunks": {"elements": chunk}, "shards": {"chunks": shards}}]
    m = model(rules=rules, elements=[sparse(shape=(rows, 500), nnz=nnz)], budget=budget,
              workers=workers)  # fmt: skip
    for array in m.element("X").arrays:
        blocks = list(array.blocks())
        assert blocks[0].start == 0 and blocks[-1].stop == nnz
        assert all(a.stop == b.start for a, b in pairwise(blocks))
        assert (array.peak > budget // workers) == (array.problem is not None)
