"""Reading h5ad datasets by their chunks' byte offsets equals h5py's reads."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from annlayout.storage.h5 import cached_h5_reader, h5_reader

LENGTH = 10_007
VALUES = np.random.default_rng(0).integers(-1000, 1000, LENGTH)

# name: (h5py create_dataset keywords, stored values)
READ_HERE = {
    "chunked": ({"chunks": (1000,)}, VALUES.astype(np.int32)),
    "ragged chunks": ({"chunks": (333,)}, VALUES.astype(np.float32)),
    "contiguous": ({}, VALUES.astype(np.uint16)),
    "big-endian": ({"chunks": (512,)}, VALUES.astype(">f8")),
    "gzip": ({"chunks": (777,), "compression": "gzip"}, VALUES.astype(np.float32)),
    "one chunk": ({"chunks": (LENGTH,), "compression": "gzip"}, VALUES.astype(np.int64)),
}


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    path = tmp_path_factory.mktemp("h5") / "arrays.h5"
    with h5py.File(path, "w") as f:
        for name, (options, values) in READ_HERE.items():
            f.create_dataset(name, data=values, **options)
        # written in part: the chunks never written read as the fill value
        part = f.create_dataset("partly written", shape=(LENGTH,), dtype="f4", chunks=(100,),
                                fillvalue=2.5)  # fmt: skip
        part[1000:1500] = 1.0
        part = f.create_dataset("never written", shape=(LENGTH,), dtype="i4", fillvalue=7)
        f.create_dataset("shuffle", data=VALUES, chunks=(100,), compression="gzip", shuffle=True)
        f.create_dataset("2-D", data=VALUES[:10_000].reshape(100, 100), chunks=(10, 10))
        f.create_dataset("strings", data=np.array(["a", "b"], dtype=object),
                         dtype=h5py.string_dtype())  # fmt: skip
    with h5py.File(path, "r") as f:
        yield f


NAMES = [*READ_HERE, "partly written", "never written"]


def runs_strategy():
    cuts = st.lists(st.integers(0, LENGTH), min_size=0, max_size=12, unique=True)
    return cuts.map(lambda c: sorted(c)).map(
        lambda c: [(a, b) for a, b in zip(c[::2], c[1::2], strict=False) if a < b]
    )


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, deadline=None)
@given(runs=runs_strategy())
def test_runs_equal_h5py(h5, name, runs):
    dataset = h5[name]
    reader = h5_reader(dataset)
    assert reader is not None
    whole = dataset[:]
    expected = np.concatenate([whole[a:b] for a, b in runs]) if runs else whole[:0]
    got = reader.read(runs)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype.newbyteorder("=")
    assert reader.read(runs, np.float64).dtype == np.float64


@pytest.mark.parametrize("name", ["shuffle", "2-D", "strings"])
def test_other_datasets_are_left_to_h5py(h5, name):
    assert h5_reader(h5[name]) is None


def test_a_file_open_for_writing_is_left_to_h5py(tmp_path):
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f.create_dataset("x", data=VALUES, chunks=(100,))
        assert h5_reader(f["x"]) is None  # unflushed writes are HDF5's to read


def test_a_rewritten_file_gets_a_new_reader(tmp_path):
    path = tmp_path / "r.h5"
    for pad, values in ((0, VALUES), (50_000, VALUES[::-1].copy())):
        with h5py.File(path, "w") as f:
            f.create_dataset("pad", data=np.zeros(pad))  # x's chunks elsewhere in the file
            f.create_dataset("x", data=values, chunks=(100,))
        with h5py.File(path, "r") as f:
            np.testing.assert_array_equal(cached_h5_reader(f["x"]).read([(0, LENGTH)]), values)


def test_without_preadv_the_reads_are_the_same(h5, monkeypatch):
    """macOS before 11 has pread but not preadv."""
    import os

    monkeypatch.delattr(os, "preadv")
    for name in ("chunked", "contiguous", "partly written"):
        np.testing.assert_array_equal(h5_reader(h5[name]).read([(3, LENGTH - 2)]),
                                      h5[name][3 : LENGTH - 2])  # fmt: skip


def test_a_file_with_a_user_block_is_read_at_its_offsets(tmp_path):
    with h5py.File(tmp_path / "u.h5", "w", userblock_size=512) as f:
        f.create_dataset("chunked", data=VALUES, chunks=(100,))
        f.create_dataset("contiguous", data=VALUES)
    with h5py.File(tmp_path / "u.h5", "r") as f:
        for name in ("chunked", "contiguous"):
            np.testing.assert_array_equal(h5_reader(f[name]).read([(0, LENGTH)]), VALUES)


def test_positions_beyond_the_dataset_are_refused(h5):
    with pytest.raises(IndexError, match="beyond"):
        h5_reader(h5["chunked"]).read([(0, LENGTH + 1)])
