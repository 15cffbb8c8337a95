"""Whole-chunk reads (annlayout.storage.chunks) equal zarr's own reads on every storage kind."""

from __future__ import annotations

from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ShardingCodec, ZstdCodec
from zarr.storage import LocalStore

from annlayout.bench.stores import Counters, MeasuredStore
from annlayout.storage.chunks import ChunkReadError, chunk_reader

LENGTH = 5_000
WRITTEN = 3_700  # the tail is never written: chunks (and a shard) missing, read as fill


def _v3(path: Path, dtype: str, *, shards: int | None, compressors, serializer="auto"):
    return zarr.create_array(
        LocalStore(path),
        shape=(LENGTH,),
        chunks=(97,),
        shards=None if shards is None else (shards,),
        dtype=dtype,
        compressors=compressors,
        serializer=serializer,
        fill_value=7,
        zarr_format=3,
    )


KINDS = {
    "v2-blosc": lambda p: zarr.create_array(
        LocalStore(p), shape=(LENGTH,), chunks=(97,), dtype="float32", fill_value=7,
        compressors=numcodecs.Blosc("lz4", 3, numcodecs.Blosc.SHUFFLE), zarr_format=2),
    "v2-zstd-big-endian": lambda p: zarr.create_array(
        LocalStore(p), shape=(LENGTH,), chunks=(97,), dtype=">i8", fill_value=7,
        compressors=numcodecs.Zstd(1), zarr_format=2),
    "v2-raw": lambda p: zarr.create_array(
        LocalStore(p), shape=(LENGTH,), chunks=(97,), dtype="uint16", fill_value=7,
        compressors=None, zarr_format=2),
    "v3-zstd": lambda p: _v3(p, "int32", shards=None, compressors=[ZstdCodec(level=1)]),
    "v3-gzip": lambda p: _v3(p, "float64", shards=None, compressors=[GzipCodec(level=1)]),
    "v3-raw": lambda p: _v3(p, "uint8", shards=None, compressors=None),
    "v3-sharded-blosc": lambda p: _v3(
        p, "float32", shards=970, compressors=[BloscCodec(cname="lz4", clevel=3, shuffle="shuffle")]),
    "v3-sharded-index-first": lambda p: _v3(
        p, "int64", shards=None, compressors=None,
        serializer=ShardingCodec(chunk_shape=(97,), codecs=[BytesCodec(), ZstdCodec(level=3)],
                                 index_location="start")),
}  # fmt: skip


@pytest.fixture(scope="module")
def arrays(tmp_path_factory) -> dict[str, tuple[zarr.Array, np.ndarray]]:
    root = tmp_path_factory.mktemp("chunk-reads")
    rng = np.random.default_rng(3)
    made = {}
    for name, make in KINDS.items():
        array = make(root / name)
        values = np.full(LENGTH, 7, dtype=array.dtype)
        values[:WRITTEN] = rng.integers(0, 200, WRITTEN).astype(array.dtype)
        array[:WRITTEN] = values[:WRITTEN]
        made[name] = (zarr.open_array(LocalStore(root / name, read_only=True)), values)
    return made


def _runs(draw_points: list[int]) -> list[tuple[int, int]]:
    """Sorted disjoint [start, stop) runs from a list of cut points."""
    cuts = sorted(set(draw_points))
    return [(a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if b > a]


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_is_read_directly(arrays, kind):
    array, _ = arrays[kind]
    assert chunk_reader(array) is not None


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kind=st.sampled_from(list(KINDS)), points=st.lists(st.integers(0, LENGTH), max_size=40))
def test_runs_equal_the_stored_values(arrays, kind, points):
    array, values = arrays[kind]
    runs = _runs(points)
    got = chunk_reader(array).read(runs)
    expected = np.concatenate([values[a:b] for a, b in runs]) if runs else values[:0]
    assert got.dtype.newbyteorder("=") == values.dtype.newbyteorder("=")
    np.testing.assert_array_equal(got, expected)


def test_whole_array_and_single_positions(arrays):
    array, values = arrays["v3-sharded-blosc"]
    reader = chunk_reader(array)
    np.testing.assert_array_equal(reader.read([(0, LENGTH)]), values)
    np.testing.assert_array_equal(reader.read([(96, 97), (97, 98)]), values[96:98])
    with pytest.raises(IndexError):
        reader.read([(0, LENGTH + 1)])


def test_requests_through_a_store_are_merged_and_counted(arrays):
    """On a non-local store: one request for the shard index, one for neighbouring chunks."""
    array, values = arrays["v3-sharded-blosc"]
    counters = Counters()
    store = MeasuredStore(LocalStore(array.store_path.store.root, read_only=True), counters)
    remote = zarr.open_array(store)
    reader = chunk_reader(remote)
    assert reader.local_root is None
    counters.reset()  # opening read the metadata
    runs = [(10, 20), (100, 300)]  # inner chunks 0, 1, 2, 3 of shard 0
    np.testing.assert_array_equal(
        reader.read(runs), np.concatenate([values[10:20], values[100:300]])
    )
    assert counters.requests == 2
    counters.reset()
    reader.read(runs)  # the shard index is kept
    assert counters.requests == 1


def test_codecs_it_does_not_know_fall_back_to_zarr(tmp_path):
    array = zarr.create_array(
        LocalStore(tmp_path / "delta"), shape=(100,), chunks=(10,), dtype="int32",
        filters=[numcodecs.Delta(dtype="int32")], compressors=None, zarr_format=2,
    )  # fmt: skip
    assert chunk_reader(array) is None


def test_a_corrupt_shard_index_is_an_error(arrays, tmp_path):
    array, _ = arrays["v3-sharded-blosc"]
    source = Path(array.store_path.store.root)
    copy = tmp_path / "corrupt"
    import shutil

    shutil.copytree(source, copy)
    shard = copy / "c" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF  # inside the index, before its checksum
    shard.write_bytes(bytes(raw))
    reader = chunk_reader(zarr.open_array(LocalStore(copy, read_only=True)))
    with pytest.raises(ChunkReadError, match="checksum"):
        reader.read([(0, 10)])


def test_a_chunk_of_the_wrong_size_is_an_error(arrays, tmp_path):
    import shutil

    array, _ = arrays["v2-blosc"]
    copy = tmp_path / "short"
    shutil.copytree(array.store_path.store.root, copy)
    (copy / "0").write_bytes(numcodecs.Blosc().encode(np.zeros(50, dtype="float32")))
    reader = chunk_reader(zarr.open_array(LocalStore(copy, read_only=True)))
    with pytest.raises(ChunkReadError, match="200 bytes, expected 388"):
        reader.read([(0, 10)])


def _in_child(target, *args) -> int | None:
    """Run ``target`` in a forked child; its exit code, or None if it hung."""
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        return None
    return child.exitcode


def _read_and_exit(array, values) -> None:
    import os

    ok = np.array_equal(chunk_reader(array).read([(0, LENGTH)]), values)
    os._exit(0 if ok else 1)


def test_a_forked_child_reads(arrays):
    """A process forked after reading (a DataLoader worker) gets its own thread pool."""
    array, values = arrays["v3-sharded-blosc"]
    chunk_reader(array).read([(0, LENGTH)])  # the parent's pool exists now
    assert _in_child(_read_and_exit, array, values) == 0


def _read_with_few_descriptors(array, values) -> None:
    import os
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    _read_and_exit(array, values)
    os._exit(1)


def test_an_unsharded_array_of_many_chunk_files_reads_within_few_descriptors(tmp_path):
    """A file per chunk: reading 500 of them never holds more than one open per thread."""
    array = zarr.create_array(
        LocalStore(tmp_path / "many"), shape=(LENGTH,), chunks=(10,), dtype="int32",
        compressors=[ZstdCodec(level=1)], zarr_format=3,
    )  # fmt: skip
    values = np.arange(LENGTH, dtype="int32")
    array[:] = values
    opened = zarr.open_array(LocalStore(tmp_path / "many", read_only=True))
    assert _in_child(_read_with_few_descriptors, opened, values) == 0


@pytest.mark.parametrize("through_store", [False, True])
def test_a_chunk_its_shard_index_lists_is_never_read_as_fill(arrays, tmp_path, through_store):
    """The shard went away after its index was read (a failed request, a store rewritten
    under a reader): an error, not the fill value."""
    import shutil

    array, _ = arrays["v3-sharded-blosc"]
    copy = tmp_path / "vanishing"
    shutil.copytree(Path(array.store_path.store.root), copy)
    store = LocalStore(copy, read_only=True)
    reader = chunk_reader(zarr.open_array(MeasuredStore(store) if through_store else store))
    reader.load_indexes()
    (copy / "c" / "0").unlink()
    with pytest.raises(ChunkReadError, match="listed in its shard index"):
        reader.read([(0, 10)])


def test_the_merge_gap_follows_the_measured_link():
    """Round trip x throughput: ranges closer than what a round trip would transfer are
    fetched as one; until both are measured, the minimum."""
    from annlayout.storage.chunks import MAX_GAP, MIN_GAP, Link

    link = Link(concurrency=10)
    assert link.gap == MIN_GAP
    link.observe(requests=10, nbytes=10 * 200, seconds=0.020)  # small: one round of 20 ms
    assert link.rtt == pytest.approx(0.020) and link.gap == MIN_GAP
    link.observe(requests=4, nbytes=40 * 2**20, seconds=0.020 + 0.2)  # 40 MiB in 0.2 s
    assert link.rate == pytest.approx(40 * 2**20 / 0.2)
    assert link.gap == pytest.approx(0.020 * 40 * 2**20 / 0.2, rel=1e-6)  # about 4 MiB
    slow = Link()
    slow.observe(1, 100, 2.0)
    slow.observe(1, 2**30, 3.0)
    assert slow.gap == MAX_GAP


def test_merged_requests_carry_at_most_twice_the_bytes_asked_for():
    """Gaps that each cost less than a round trip must not add up to whole shards: chunks
    1 MB apart merge only while the merged range stays within MAX_WASTE of their bytes;
    neighbours always merge, up to the request span; every chunk is in exactly one request
    that covers it."""
    from annlayout.storage.chunks import MAX_WASTE, merged_requests

    gap, span, chunk = 4_000_000, 4_000_000, 100_000  # 20 ms at 200 MB/s
    scattered = [("shard", k * 2**20, k * 2**20 + chunk) for k in range(20)]
    requests = merged_requests(scattered, gap, span)
    assert sum(r.size for r in requests) <= MAX_WASTE * 20 * chunk + 2**20  # not 20 MB
    neighbours = [("shard", k * chunk, (k + 1) * chunk) for k in range(400)]  # 40 MB
    requests = merged_requests(neighbours, gap, span)
    assert len(requests) == -(-400 * chunk // span) and max(r.size for r in requests) <= span
    for located in (scattered, neighbours):
        members = sorted(i for r in merged_requests(located, gap, span) for i in r.members)
        assert members == list(range(len(located)))
        for r in merged_requests(located, gap, span):
            assert all(r.start <= located[i][1] < located[i][2] <= r.stop for i in r.members)


def test_requests_never_merge_across_objects_whole_objects_or_missing_chunks():
    from annlayout.storage.chunks import merged_requests

    located = [("b", 0, 10), None, ("a", 10, 20), ("a", 0, 10), ("c", 0, -1), ("c", 0, -1)]
    requests = merged_requests(located, gap=2**20, span=2**30)
    assert [(r.key, r.start, r.stop, r.members) for r in requests] == [
        ("a", 0, 20, [3, 2]),
        ("b", 0, 10, [0]),
        ("c", 0, -1, [4]),
        ("c", 0, -1, [5]),
    ]


@pytest.mark.parametrize("kind", ["v3-sharded-blosc", "v2-zstd-big-endian"])
def test_a_remote_scan_within_a_small_fetch_budget_equals_the_stored_values(
    arrays, kind, monkeypatch
):
    """Through a store (not pread), with room for about 3 chunks fetched and not decoded:
    requests wait for the budget, and every chunk still arrives in its place."""
    import annlayout.storage.chunks

    budget = 97 * 8 * 3
    monkeypatch.setattr(annlayout.storage.chunks, "FETCH_BUDGET", budget)
    held: list[int] = []
    acquire = annlayout.storage.chunks._Budget.acquire

    async def counted(self, nbytes):
        await acquire(self, nbytes)
        held.append(self.used)

    monkeypatch.setattr(annlayout.storage.chunks._Budget, "acquire", counted)
    array, values = arrays[kind]
    counters = Counters()
    remote = zarr.open_array(MeasuredStore(LocalStore(array.store_path.store.root), counters))
    reader = chunk_reader(remote)
    assert reader.local_root is None
    np.testing.assert_array_equal(reader.read([(0, LENGTH)]), values)
    np.testing.assert_array_equal(
        reader.read([(5, 900), (1000, 3000)]), np.r_[values[5:900], values[1000:3000]]
    )
    assert len(held) > 3 and max(held) <= budget
