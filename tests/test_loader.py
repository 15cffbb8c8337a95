"""The training loader (annlayout.reading.loader): every row once per epoch across ranks and workers,
a fixed order per (seed, epoch), contents equal to anndata's read, read-ahead within bounds,
the async form, errors, on real stores (anndata's own writes, shipped layouts, the corpus,
S3)."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import pickle
import subprocess
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import annlayout
from annlayout.base.errors import ChunkReadError, LoaderError
from annlayout.reading.loader import Batches, batches, split

from .conftest import SHIPPED, output_name, read_any
from .test_corpus import CORPUS, READABLE

OBS = ["cell_type", "batch", "n_genes"]


@pytest.fixture(scope="module")
def paths(stores, tmp_path_factory) -> dict[str, Path]:
    """anndata's own h5ad, zarr v2 and v3, and every shipped layout: sharded zarr v3
    (ml-minibatch, 64 rows per chunk), two orientations (cell-browser), deflated h5ad, ..."""
    root = tmp_path_factory.mktemp("loader")
    found = dict(stores)
    for layout in SHIPPED:
        found[layout] = root / output_name(layout).replace("out", layout)
        annlayout.apply(layout, stores["h5ad"], found[layout], small_element=0)
    return found


@pytest.fixture(scope="module")
def expected(stores) -> ad.AnnData:
    return read_any(stores["h5ad"])


def epoch_rows(loader: Batches, num_workers: int) -> list[np.ndarray]:
    """Each batch's (source, index) rows, for every worker of ``loader``'s rank."""
    rows = []
    for worker in range(num_workers):
        for batch in loader.iter_worker(worker, num_workers):
            rows.append(np.stack([batch.source, batch.index], 1))
    return rows


def assert_same_sparse(got, want) -> None:
    assert sp.issparse(got) and got.shape == want.shape and got.dtype == want.dtype
    assert (got != want).nnz == 0


# -- splitting -------------------------------------------------------------------------


@pytest.mark.parametrize("n_blocks", [0, 1, 5, 17])
def test_split_gives_each_block_to_exactly_one_rank_and_worker(n_blocks):
    for world_size in (1, 2, 3):
        for num_workers in (1, 2, 3):
            taken = [
                np.arange(n_blocks)[
                    split(
                        n_blocks, rank=r, world_size=world_size, worker=w, num_workers=num_workers
                    )
                ]
                for r in range(world_size)
                for w in range(num_workers)
            ]
            together = np.concatenate(taken)
            assert np.array_equal(np.sort(together), np.arange(n_blocks))
            assert max(map(len, taken)) - min(map(len, taken)) <= 1


@pytest.mark.parametrize("store", ["h5ad", "zarr2", "zarr3", "ml-minibatch"])
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 2], ids=["no-workers", "2-workers"])
def test_every_row_once_per_epoch_across_ranks_and_workers(paths, store, world_size, workers):
    data = annlayout.open(paths[store])
    shares = max(workers, 1)
    seen = []
    for rank in range(world_size):
        loader = data.batches(64, rank=rank, world_size=world_size, seed=3, epoch=1)
        for worker in range(shares):
            rows = [np.asarray(b.index) for b in loader.iter_worker(worker, shares)]
            assert len(rows) == loader.count(worker, shares)
            assert all(len(r) == 64 for r in rows[:-1])  # a share's last batch may be short
            seen += rows
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(data.shape[0]))


def test_blocks_are_whole_chunks_of_the_store(paths):
    """Default blocks begin where chunks of X/data begin (whole chunks: see the next test
    for how many), and shuffle=False streams rows in order."""
    data = annlayout.open(paths["ml-minibatch"])
    starts = data.X.chunk_starts()
    assert starts[0] == 0 and starts[-1] == data.shape[0] and np.all(np.diff(starts) > 0)
    chunk = zarr_chunk_len(paths["ml-minibatch"])
    indptr = data.X.indptr()
    assert np.all(np.diff(indptr[starts[1:-1]] // chunk) > 0)  # each block starts a chunk
    loader = data.batches(64, shuffle=False)
    first = next(iter(loader))
    assert np.array_equal(first.index, np.arange(64))  # shuffle=False streams in order


def test_default_blocks_are_runs_of_whole_chunks_of_at_least_block_rows(tmp_path):
    """Small chunks are grouped: a one-chunk block also decodes the chunk its last row
    straddles into, about twice what it keeps; a block of BLOCK_ROWS rows, a fraction."""
    from annlayout.generate.synthetic import make_dataset
    from annlayout.reading.loader import BLOCK_ROWS

    annlayout.write(make_dataset(3000, 300, nnz_per_cell=30), tmp_path / "m.zarr", "ml-minibatch")
    data = annlayout.open(tmp_path / "m.zarr")
    starts = data.X.chunk_starts()
    assert data.shape[0] > 2 * BLOCK_ROWS and np.median(np.diff(starts)) < BLOCK_ROWS
    sizes, firsts = [], []
    for [(_, rows)] in data.batches(64, shuffle=False, buffer=1).buffers():
        sizes.append(rows.size)
        firsts.append(rows[0])
        assert np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size))
    assert min(sizes[:-1]) >= BLOCK_ROWS and sum(sizes) == data.shape[0]
    assert set(firsts) <= set(starts.tolist())  # each block begins at a chunk


def zarr_chunk_len(path: Path) -> int:
    import zarr

    return int(zarr.open_group(path, mode="r")["X/data"].chunks[0])


# -- order -------------------------------------------------------------------------------


def test_the_order_is_fixed_by_seed_and_epoch(paths):
    data = annlayout.open(paths["zarr3"])

    def order(**options) -> np.ndarray:
        return np.concatenate([b.index for b in data.batches(50, **options)])

    first = order(seed=1, epoch=0)
    assert np.array_equal(first, order(seed=1, epoch=0))
    assert not np.array_equal(first, order(seed=1, epoch=1))
    assert not np.array_equal(first, order(seed=2, epoch=0))
    assert np.array_equal(order(shuffle=False), np.arange(data.shape[0]))
    loader = data.batches(50, seed=1)
    loader.set_epoch(1)
    assert np.array_equal(np.concatenate([b.index for b in loader]), order(seed=1, epoch=1))
    # mixed: not block after block in store order, nor one block's rows together
    assert np.mean(np.abs(np.diff(first)) == 1) < 0.2


def test_drop_last_yields_full_batches_only_and_as_many_on_every_rank(paths):
    data = annlayout.open(paths["zarr2"])
    loader = data.batches(128, drop_last=True)
    sizes = [len(b) for b in loader]
    assert sizes == [128] * (data.shape[0] // 128) == [128] * len(loader)
    # blocks of 7 rows over 3 ranks: unequal shares, but ranks must step together
    seen, counts = [], []
    for rank in range(3):
        ranked = data.batches(20, drop_last=True, block=7, rank=rank, world_size=3, seed=1)
        for worker in range(2):
            got = [b.index for b in ranked.iter_worker(worker, 2)]
            assert [len(b) for b in got] == [20] * ranked.count(worker, 2)
            seen += got
        counts.append(ranked.count(0, 2) + ranked.count(1, 2))
    assert len(set(counts)) == 1 and counts[0] > 0
    together = np.concatenate(seen)
    assert together.size == np.unique(together).size  # nothing twice


# -- contents ----------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["h5ad", "zarr2", "zarr3", *SHIPPED])
def test_batches_equal_anndatas_read_of_their_rows(paths, expected, store):
    data = annlayout.open(paths[store])
    for batch in data.batches(100, obs=OBS, seed=5):
        assert_same_sparse(batch.X, expected.X[batch.index])
        want = expected.obs.iloc[batch.index][OBS]
        pd.testing.assert_frame_equal(batch.obs, want, check_names=False)


def test_numpy_output_and_layers_and_a_dense_store(tmp_path, paths, expected):
    data = annlayout.open(paths["zarr3"])
    batch = next(iter(data.batches(30, output="numpy")))
    assert isinstance(batch.X, np.ndarray)
    assert np.array_equal(batch.X, expected.X[batch.index].toarray())
    dense = expected.copy()
    dense.X = dense.X.toarray()
    dense.layers["counts"] = expected.X.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dense.write_zarr(tmp_path / "dense.zarr")
    handle = annlayout.open(tmp_path / "dense.zarr")
    rows = [b for b in handle.batches(70, seed=2)]
    assert all(isinstance(b.X, np.ndarray) for b in rows)
    for b in rows:
        assert np.array_equal(b.X, dense.X[b.index])
    for b in handle.batches(70, layer="counts"):
        assert_same_sparse(b.X, expected.X[b.index])
    assert sorted(np.concatenate([b.index for b in rows]).tolist()) == list(range(dense.n_obs))


def test_batches_are_cut_from_one_shuffled_copy_of_their_buffer(paths, expected):
    """The shuffle copies a buffer's rows once, into arrays its batches view: consecutive
    batches lie end to end in memory (not copied again one by one, which scipy does to a
    view of a much larger array unless kept from it); only a batch that joins two buffers,
    or starts another read-pool thread's share of one, does not follow its predecessor."""
    from annlayout.storage.chunks import read_pool

    data = annlayout.open(paths["ml-minibatch"])
    loader = data.batches(10, block=100, buffer=data.shape[0], seed=1)  # one buffer
    got = list(loader)

    def address(a: np.ndarray) -> int:
        return a.__array_interface__["data"][0]

    adjacent = sum(
        address(b.X.data) == address(a.X.data) + a.X.data.nbytes
        and address(b.X.indices) == address(a.X.indices) + a.X.indices.nbytes
        for a, b in itertools.pairwise(got)
    )
    cuts = read_pool()._max_workers  # where one thread's share of the buffer follows another's
    assert len(got) - 1 - cuts > 0 and adjacent >= len(got) - 1 - cuts
    for batch in got:  # contents as read, each batch apart from its neighbours
        assert_same_sparse(batch.X, expected.X[batch.index])


def test_jax_output_equals_anndatas_rows(tmp_path, paths, expected):
    """A real jax (in the test extra): sparse X as BCSR, a dense store's as a jax array, each
    equal to anndata's rows; ``device=`` puts them there."""
    jax = pytest.importorskip("jax")
    from jax.experimental import sparse as jsparse

    data = annlayout.open(paths["ml-minibatch"])
    device = jax.devices("cpu")[0]
    seen = []
    for batch in data.batches(64, output="jax", seed=4, device=device):
        assert isinstance(batch.X, jsparse.BCSR) and batch.X.shape == (len(batch), data.shape[1])
        x = batch.X  # compared through its arrays: todense() compiles for every nnz
        got = sp.csr_matrix(tuple(np.asarray(a) for a in (x.data, x.indices, x.indptr)), x.shape)
        assert_same_sparse(got, expected.X[batch.index])
        assert x.data.devices() == {device}
        seen.append(batch.index)
    assert sorted(np.concatenate(seen).tolist()) == list(range(expected.n_obs))
    dense = ad.AnnData(X=expected.X.toarray(), obs=expected.obs[[]])
    dense.write_zarr(tmp_path / "dense.zarr")
    for batch in annlayout.open(tmp_path / "dense.zarr").batches(70, output="jax", seed=1):
        assert isinstance(batch.X, jax.Array)
        assert np.array_equal(np.asarray(batch.X), dense.X[batch.index])


def test_unchunked_values_are_read_in_blocks_of_their_own(tmp_path, expected):
    """A contiguous h5ad dataset (anndata's dense X) has no chunks to follow: blocks of
    UNCHUNKED_BLOCK rows, not the whole matrix as one block."""
    from annlayout.reading.loader import UNCHUNKED_BLOCK

    dense = expected.copy()
    dense.X = dense.X.toarray()
    dense.write_h5ad(tmp_path / "dense.h5ad")
    data = annlayout.open(tmp_path / "dense.h5ad")
    assert data.X.chunk_starts() is None
    loader = data.batches(50, shuffle=False, buffer=1)
    sizes = [rows.size for [(_, rows)] in loader.buffers()]
    assert sizes == [UNCHUNKED_BLOCK, dense.n_obs - UNCHUNKED_BLOCK]
    assert np.array_equal(np.concatenate([b.X for b in loader]), dense.X)


def test_several_stores_read_as_one_record_each_rows_source(paths, expected):
    first, second = annlayout.open(paths["h5ad"]), annlayout.open(paths["ml-minibatch"])
    loader = annlayout.loader.batches([first, second], 90, obs=["cell_type"], seed=4)
    rows = np.concatenate(epoch_rows(loader, 1))
    n = first.shape[0]
    assert sorted(map(tuple, rows.tolist())) == [(s, i) for s in (0, 1) for i in range(n)]
    mixed = 0
    for batch in loader:
        assert_same_sparse(batch.X, expected.X[batch.index])  # the two hold the same data
        assert list(batch.obs["cell_type"]) == list(expected.obs["cell_type"].iloc[batch.index])
        mixed += len(set(batch.source.tolist())) == 2
    assert mixed  # the stores' blocks are shuffled together


def test_annlayout_loader_needs_no_import_of_its_own():
    code = "import annlayout; print(annlayout.loader.batches.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "batches"


def test_memory_bounds_the_buffers_and_reads_run_one_buffer_ahead(paths):
    data = annlayout.open(paths["zarr3"])
    reads = []
    take = data.X.atake

    async def counted(rows):
        reads.append(rows.size)
        return await take(rows)

    data.X.atake = counted  # type: ignore[method-assign]
    loader = data.batches(20, block=10, memory="120KiB")  # 40 KiB a buffer: ~2 blocks
    first = iter(loader)
    next(first)
    time.sleep(0.3)  # the read-ahead thread has had time to run ahead if it would
    assert len(reads) <= 2  # the buffer being consumed and the one after it
    rest = list(first)
    assert max(reads) < data.shape[0] / 4 and sum(reads) == data.shape[0]
    assert len(rest) + 1 == len(loader)


# -- where stores are --------------------------------------------------------------------

STREAMED = [f for f in READABLE if f["kind"] != "noX"]


@pytest.mark.parametrize("entry", STREAMED, ids=[f["file"] for f in STREAMED])
def test_every_corpus_file_streams(entry):
    source = CORPUS / entry["path"]
    want = read_any(source)
    data = annlayout.open(source)
    column = [str(want.obs.columns[0])] if len(want.obs.columns) else []
    got = list(data.batches(64, obs=column, seed=1))
    index = np.concatenate([b.index for b in got]) if got else np.zeros(0, int)
    assert np.array_equal(np.sort(index), np.arange(want.n_obs))
    for batch in got:
        expected_rows = want.X[batch.index]
        if sp.issparse(expected_rows):
            assert_same_sparse(batch.X, sp.csr_matrix(expected_rows))
        else:
            assert np.array_equal(batch.X, np.asarray(expected_rows))
        if column:
            assert list(batch.obs[column[0]]) == list(want.obs[column[0]].iloc[batch.index])


def test_a_store_on_s3_streams_as_the_local_one(paths, s3):
    url = f"{s3}/loader.zarr"
    annlayout.apply("ml-minibatch", paths["h5ad"], url)
    local, remote = annlayout.open(paths["ml-minibatch"]), annlayout.open(url)
    for a, b in zip(local.batches(100, seed=9), remote.batches(100, seed=9), strict=True):
        assert np.array_equal(a.index, b.index)
        assert_same_sparse(a.X, b.X)


def test_a_chunk_that_never_arrives_is_an_error_not_a_gap(paths, proxied_s3, monkeypatch):
    url = f"{proxied_s3.url}/never.zarr"
    annlayout.apply("ml-minibatch", paths["h5ad"], url)
    monkeypatch.setenv("ANNLAYOUT_MAX_RETRIES", "1")  # fail fast
    data = annlayout.open(url)
    data.X.warm()  # indptr and shard indexes arrive
    loader = data.batches(64, block=100)
    proxied_s3.proxy.fail("503", times=1000, method="GET", path_contains="/X/data")
    got = []
    with pytest.raises(Exception):  # noqa: B017  (the client's own error: any, but never a gap)
        for batch in loader:
            got.append(batch)
    assert not got  # no batch came before the failure: the first buffer failed


def test_a_corrupt_chunk_on_disk_is_an_error_not_a_gap(paths, tmp_path):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(paths["zarr3"], copy)
    chunk = sorted((copy / "X" / "data" / "c").iterdir())[0]
    chunk.write_bytes(b"\x00" * 64)  # still there, but not a chunk
    with pytest.raises((ChunkReadError, RuntimeError)):  # annlayout's check, or the codec's
        list(annlayout.open(copy).batches(64, shuffle=False))


# -- async --------------------------------------------------------------------------------


def test_async_batches_and_reads_equal_the_sync_ones_off_the_loop_thread(paths, monkeypatch):
    import zarr.core.sync

    data = annlayout.open(paths["ml-minibatch"])
    sync_rows = [b.index for b in data.batches(80, seed=7)]
    fresh = annlayout.open(paths["ml-minibatch"])  # its offsets not read yet
    matrix = fresh.X  # opening a handle reads metadata (sync); its offsets are not read yet
    on_loop: list[str] = []
    original = zarr.core.sync.sync

    def recorded(*args, **kwargs):
        if asyncio._get_running_loop() is not None:  # called on the caller's loop's thread
            on_loop.append(repr(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(zarr.core.sync, "sync", recorded)

    async def main():
        ticks = 0

        async def ticker():  # the loop keeps running while batches are read
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        running = asyncio.create_task(ticker())
        got = [b async for b in fresh.abatches(80, seed=7)]
        rows = await matrix.aread([5, 1, 3])
        running.cancel()
        return got, rows, ticks

    got, rows, ticks = asyncio.run(main())
    assert [len(b) for b in got] == [len(r) for r in sync_rows]
    assert all(np.array_equal(b.index, r) for b, r in zip(got, sync_rows, strict=True))
    assert_same_sparse(rows, data.X[[5, 1, 3], :])
    assert ticks > len(got)
    assert not on_loop  # zarr's own loop never entered from the caller's


@pytest.mark.parametrize("store_backend", ["obstore", "fsspec"])
def test_async_reads_fetch_on_the_callers_loop_from_a_slow_s3(
    paths, proxied_s3, monkeypatch, store_backend
):
    """``abatches`` and ``X.aread`` fetch chunks on the caller's event loop (obstore's async
    gets there; fsspec's, bound to zarr's loop, awaited from it) while another task keeps
    running, over a link with a 20 ms round trip; their results equal the sync API's."""
    import threading

    from annlayout.storage import chunks

    monkeypatch.setenv("ANNLAYOUT_STORE_BACKEND", store_backend)
    url = f"{proxied_s3.url}/slow.zarr"
    annlayout.apply("ml-minibatch", paths["h5ad"], url)
    sync_batches = list(annlayout.open(url).batches(100, seed=3, obs=["cell_type"]))
    want = annlayout.open(url).X[[7, 2, 40], :]
    fetched_on: set[tuple[int, int]] = set()  # (thread, loop) of each chunk fetch
    original = chunks._fetcher

    def recorded(store):
        fetch = original(store)

        async def one(key, byte_range):
            loop = asyncio.get_running_loop()
            fetched_on.add((threading.get_ident(), id(loop)))
            return await fetch(key, byte_range)

        return one

    monkeypatch.setattr(chunks, "_fetcher", recorded)
    proxied_s3.proxy.rtt = 0.02

    async def main():
        data = annlayout.open(url)  # metadata only
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        running = asyncio.create_task(ticker())
        got = [b async for b in data.abatches(100, seed=3, obs=["cell_type"])]
        ticks_batches = ticks
        rows = await data.X.aread([7, 2, 40])
        running.cancel()
        here = (threading.get_ident(), id(asyncio.get_running_loop()))
        return got, rows, ticks_batches, here

    got, rows, ticks, here = asyncio.run(main())
    assert [b.index.tolist() for b in got] == [b.index.tolist() for b in sync_batches]
    for a, b in zip(got, sync_batches, strict=True):
        assert_same_sparse(a.X, b.X)
        assert a.obs.equals(b.obs)
    assert_same_sparse(rows, want)
    assert ticks >= 20  # the loop ran other tasks during the reads: 20 ms per round trip
    assert fetched_on == {here}  # every chunk and shard index fetched on the caller's loop


# -- processes ---------------------------------------------------------------------------


def test_a_pickled_loader_yields_the_same_epoch(paths):
    """A DataLoader started by spawn pickles its dataset into each worker."""
    loader = annlayout.open(paths["h5ad"]).batches(64, obs=["batch"], seed=8, epoch=2)
    copy = pickle.loads(pickle.dumps(loader))
    for a, b in zip(loader, copy, strict=True):
        assert np.array_equal(a.index, b.index)
        assert_same_sparse(a.X, b.X)


def _worker_rows(loader: Batches, worker: int, out) -> None:
    out.put([b.index.tolist() for b in loader.iter_worker(worker, 2)])


def test_a_forked_worker_reads_its_share(paths):
    """DataLoader workers are forked from a process that has read already (read pool,
    zarr's event loop, open handles): the child's share equals the parent's."""
    data = annlayout.open(paths["ml-minibatch"])
    loader = data.batches(64, seed=6)
    here = [b.index.tolist() for b in loader.iter_worker(1, 2)]
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_worker_rows, args=(loader, 1, out))
    child.start()
    try:
        assert out.get(timeout=60) == here
    finally:
        child.join(10)
    assert child.exitcode == 0


# -- errors --------------------------------------------------------------------------------


def test_bad_arguments_are_one_line_errors(paths, tmp_path):
    data = annlayout.open(paths["zarr3"])
    cases = {
        "batch_size=0": lambda: data.batches(0),
        "no obs column 'nope'": lambda: data.batches(obs=["nope"]),
        "rank=2": lambda: data.batches(rank=2, world_size=2),
        "no layer 'nope'": lambda: data.batches(layer="nope"),
        "output='torch' needs torch": lambda: data.batches(output="torch"),
        "memory='1KiB'": lambda: data.batches(memory="1KiB"),
        "output='sparse'": lambda: data.batches(output="sparse"),
        "device='cuda'": lambda: data.batches(device="cuda"),
        "'x.zarr' is not a store opened by annlayout.open": lambda: batches(["x.zarr"]),
        "world_size=0": lambda: data.batches(world_size=0),
    }
    for needle, call in cases.items():
        with pytest.raises(LoaderError) as caught:
            call()
        message = str(caught.value)
        assert needle in message and "\n" not in message, message
    with pytest.raises(LoaderError, match=r"in3\.zarr: no obs column 'nope'"):
        data.batches(obs=["nope"])  # names the store
    no_x = next(f for f in READABLE if f["kind"] == "noX")
    with pytest.raises(LoaderError, match="has no X"):
        annlayout.open(CORPUS / no_x["path"]).batches(10)
    other = read_any(paths["h5ad"])[:, :50].copy()
    other.write_h5ad(tmp_path / "fewer.h5ad")
    with pytest.raises(LoaderError, match="var names differ"):
        batches([data, annlayout.open(tmp_path / "fewer.h5ad")])


def test_a_csc_only_matrix_is_refused_with_the_reason(tmp_path, expected):
    csc = expected.copy()
    csc.X = expected.X.tocsc()
    csc.write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(LoaderError, match=r"CSC only, so every block of rows would read all of it"):
        annlayout.open(tmp_path / "csc.h5ad").batches(10)


def test_under_torch_it_is_an_iterable_dataset_split_by_worker_and_rank(paths, monkeypatch):
    """torch is not installed here: a stand-in with the three things the loader uses
    (IterableDataset, get_worker_info, an initialised torch.distributed) checks that it
    subclasses the one, reads its share from the others, and pickles into a worker."""
    import types

    import annlayout.reading.loader as loader_module

    torch = types.ModuleType("torch")
    torch.utils = types.ModuleType("torch.utils")
    torch.utils.data = types.ModuleType("torch.utils.data")
    torch.distributed = types.ModuleType("torch.distributed")

    class IterableDataset:
        pass

    torch.utils.data.IterableDataset = IterableDataset
    torch.utils.data.get_worker_info = lambda: types.SimpleNamespace(id=1, num_workers=2)
    torch.distributed.is_available = lambda: True
    torch.distributed.is_initialized = lambda: True
    torch.distributed.get_rank = lambda: 1
    torch.distributed.get_world_size = lambda: 3
    modules = {"torch": torch, "torch.utils": torch.utils, "torch.utils.data": torch.utils.data,
               "torch.distributed": torch.distributed}  # fmt: skip
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(loader_module, "_TORCH_BATCHES", None)

    data = annlayout.open(paths["zarr3"])
    under_torch = data.batches(40, seed=2, block=20)
    assert isinstance(under_torch, IterableDataset) and isinstance(under_torch, Batches)
    assert (under_torch.rank, under_torch.world_size) == (1, 3)
    got = [b.index for b in under_torch]
    want = [b.index for b in under_torch.iter_worker(1, 2)]
    assert len(got) == len(want) == len(under_torch) and len(got) > 0
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    copy = pickle.loads(pickle.dumps(under_torch))
    assert isinstance(copy, IterableDataset)
    assert all(np.array_equal(a.index, b) for a, b in zip(copy, want, strict=True))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_real_torch_dataloader_sees_every_row_once_as_torch_tensors(paths, expected, num_workers):
    """With torch installed (not in CI: its PyPI wheels pull several GB of CUDA libraries; run
    in an environment with torch, see benchmarks/README.md): a plain DataLoader over the
    loader, in worker processes, yields sparse CSR tensors whose rows are anndata's."""
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    loader = annlayout.open(paths["ml-minibatch"]).batches(
        50, seed=3, block=20, output="torch", obs=["cell_type"]
    )
    assert isinstance(loader, torch.utils.data.IterableDataset)
    seen = []
    for batch in DataLoader(loader, batch_size=None, num_workers=num_workers):
        assert batch.X.layout == torch.sparse_csr and batch.X.shape[0] == len(batch.index)
        want = expected.X[np.asarray(batch.index)]
        got = sp.csr_matrix(
            (batch.X.values().numpy(), batch.X.col_indices().numpy(),
             batch.X.crow_indices().numpy()), shape=tuple(batch.X.shape),
        )  # fmt: skip
        assert (got != want).nnz == 0
        assert list(batch.obs["cell_type"]) == list(expected.obs["cell_type"].iloc[batch.index])
        seen.append(np.asarray(batch.index))
    rows = np.concatenate(seen)
    assert np.array_equal(np.sort(rows), np.arange(expected.n_obs))
