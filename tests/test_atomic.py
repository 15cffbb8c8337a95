"""The one local commit (atomic.replace) and its mending after a kill (atomic.recover)."""

from __future__ import annotations

import pytest

import annlayout.storage.commit as atomic


def _store(path, text):
    if ".zarr" in path.name:
        path.mkdir()
        (path / "zarr.json").write_text(text)
    else:
        path.write_text(text)


def _read(path):
    return (path / "zarr.json").read_text() if path.is_dir() else path.read_text()


@pytest.mark.parametrize("name", ["out.zarr", "out.h5ad"])
@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "set-aside"])
def test_replace_leaves_the_new_store_and_nothing_beside_it(tmp_path, monkeypatch, name, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    output, tmp = tmp_path / name, atomic.temporary_sibling(tmp_path / name)
    _store(tmp, "first")
    atomic.replace(tmp, output)  # nothing there yet: a rename
    _store(tmp, "second")
    atomic.replace(tmp, output)
    assert _read(output) == "second" and [p.name for p in tmp_path.iterdir()] == [name]


def test_recover_keeps_the_store_at_the_name_or_puts_the_old_one_back(tmp_path):
    output = tmp_path / "out.zarr"
    old = atomic.old_sibling(output)
    assert atomic.recover(output) is None
    _store(output, "new")
    _store(old, "old")  # killed after the exchange, or before it: the name's store wins
    assert "removed" in atomic.recover(output)
    assert _read(output) == "new" and not old.exists()
    output.rename(old)  # killed between the two renames of the set-aside
    assert "put back" in atomic.recover(output)
    assert _read(output) == "new" and not old.exists()
