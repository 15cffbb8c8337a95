"""annlayout append to a store on object storage (the loopback S3 server, both clients): the
same store as a local append, and a failure or a kill while objects are replaced leaves the
store's objects exactly as they were (restored from the journal), byte for byte."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import anndata as ad
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from annlayout import append, concat
from annlayout.cli import main
from annlayout.combine.append import AppendError
from annlayout.generate.synthetic import make_part
from annlayout.storage.journal import has_journal, journal_url, roll_back
from annlayout.storage.remote import filesystem, listing

from .test_append import _layout

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")
pytest.importorskip("obstore")
pytestmark = pytest.mark.usefixtures("backend")  # every test through each client


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Three h5ad inputs of 60 genes (one with a differing gene set), X and a counts layer."""
    root = tmp_path_factory.mktemp("append-inputs")
    paths = []
    for i in range(3):
        adata = make_part(i, 150 + 40 * i, 60, nnz_per_cell=10, n_pcs=3, seed=11)
        adata.layers["counts"] = adata.X.copy()
        paths.append(root / f"part-{i}.h5ad")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata.write_h5ad(paths[-1])
    return paths


def _objects(url: str) -> dict[str, bytes]:
    """Every object under ``url``, name -> bytes (read with s3fs, whichever client wrote)."""
    fs = filesystem(url)
    fs.invalidate_cache()  # s3fs's listings of this process are older than the writes
    return {name: fs.cat_file(f"{url}/{name}") for name in listing(url)}


def _read(location) -> ad.AnnData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ad.read_zarr(location)


def _same(got: ad.AnnData, expected: ad.AnnData) -> None:
    assert list(got.obs_names) == list(expected.obs_names)
    assert list(got.var_names) == list(expected.var_names)
    assert got.obs.equals(expected.obs)
    for a, b in [(got.X, expected.X), (got.layers["counts"], expected.layers["counts"])]:
        assert (sp.csr_matrix(a) != sp.csr_matrix(b)).nnz == 0


def _leftovers(s3: str, prefix: str) -> list[str]:
    """Hidden siblings (staging, journal) left under the test's prefix."""
    return [name for name in listing(f"{s3}/{prefix}") if name.startswith(".")]


@pytest.mark.parametrize("base", ["ml-minibatch", "cell-browser"])
def test_append_to_s3_equals_a_local_append(tmp_path, s3, backend, inputs, base):
    orientations = "[csr, csc]" if base == "cell-browser" else "[csr]"
    layout = _layout(tmp_path, base, orientations)
    prefix = f"{backend}-append-{base}"
    remote, local = f"{s3}/{prefix}/store.zarr", tmp_path / "store.zarr"
    options = {"join": "outer", "label": "batch", "keys": ["a"]}
    for store in (remote, local):
        concat(layout, inputs[:1], store, **options)
    before = _objects(remote)
    options = {"join": "outer", "label": "batch", "keys": ["b", "c"], "index_unique": "-"}
    result = append(remote, inputs[1:], memory="256KiB", **options)
    assert result.verified and result.linked_files > 0 and result.written_bytes > 0
    append(local, inputs[1:], memory="256KiB", **options)
    _same(_read(remote), _read(local))
    after = _objects(remote)
    shards = [name for name in before if name.startswith("X/data/c/")]
    kept = [name for name in shards if after.get(name) == before[name]]
    assert len(kept) >= len(shards) - 1 >= 2
    assert _leftovers(s3, prefix) == []
    assert CliRunner().invoke(main, ["inspect", remote]).exit_code == 0


def test_a_failed_commit_to_s3_leaves_every_object_as_it_was(
    tmp_path, s3, backend, inputs, monkeypatch
):
    import annlayout.storage.journal as journal

    prefix = f"{backend}-append-failed"
    remote = f"{s3}/{prefix}/store.zarr"
    concat(_layout(tmp_path, "cell-browser", "[csr, csc]"), inputs[:1], remote)
    before = _objects(remote)
    copies = journal.copy_objects
    calls = []

    def failing(source, target, names):  # the backup and a first batch of new objects arrive
        calls.append(names)
        copies(source, target, names)
        if len(calls) == 2:
            raise OSError("503 Slow Down (injected)")

    monkeypatch.setattr(journal, "copy_objects", failing)
    with pytest.raises(OSError, match="injected"):
        append(remote, inputs[1:2], join="outer")
    monkeypatch.setattr(journal, "copy_objects", copies)
    assert _objects(remote) == before
    assert _leftovers(s3, prefix) == []


KILLED_APPEND = """\
import os, sys
import annlayout.storage.journal as journal
from annlayout import append

copies, calls = journal.copy_objects, []

def dying(source, target, names):
    calls.append(names)
    copies(source, target, names)
    if len(calls) == 2:  # the backup, then new objects: the store is half replaced
        os._exit(9)

journal.copy_objects = dying
append(sys.argv[1], sys.argv[2:], join="outer")
"""


def test_an_append_to_s3_killed_mid_commit_is_refused_then_rolled_back(
    tmp_path, s3, backend, inputs
):
    prefix = f"{backend}-append-killed"
    remote = f"{s3}/{prefix}/store.zarr"
    concat(_layout(tmp_path, "ml-minibatch"), inputs[:1], remote)
    before = _objects(remote)
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(KILLED_APPEND))
    killed = subprocess.run(
        [sys.executable, script, remote, *map(str, inputs[1:])], capture_output=True, text=True
    )
    assert killed.returncode == 9, killed.stderr
    assert has_journal(remote) and _objects(remote) != before
    for command in (["inspect", remote], ["verify", str(inputs[0]), remote]):
        refused = CliRunner().invoke(main, command)
        assert refused.exit_code != 0
        assert "append to this store was cut short" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1

    assert roll_back(remote) and not has_journal(remote)
    assert _objects(remote) == before
    assert not listing(journal_url(remote))
    assert not roll_back(remote)  # nothing left to undo


def test_a_rerun_after_a_kill_restores_then_appends(tmp_path, s3, backend, inputs):
    prefix = f"{backend}-append-rerun"
    remote, local = f"{s3}/{prefix}/store.zarr", tmp_path / "store.zarr"
    layout = _layout(tmp_path, "cell-browser", "[csr, csc]")
    for store in (remote, local):
        concat(layout, inputs[:1], store)
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(KILLED_APPEND))
    args = [sys.executable, script, remote, *map(str, inputs[1:])]
    assert subprocess.run(args, capture_output=True).returncode == 9
    result = append(remote, inputs[1:], join="outer")
    assert any("rolled back first" in note for note in result.notes)
    append(local, inputs[1:], join="outer")
    _same(_read(remote), _read(local))
    assert _leftovers(s3, prefix) == []
    with pytest.raises(AppendError, match="already appended"):
        append(remote, inputs[1:], join="outer")


def test_append_through_injected_failures_equals_a_clean_append(
    tmp_path, proxied_s3, backend, inputs
):
    """503s and dropped connections on the server-side copies, the writes and the reads of an
    append (through the loopback proxy) are retried: the store equals a local append."""
    layout = _layout(tmp_path, "cell-browser", "[csr, csc]")
    remote, local = f"{proxied_s3.url}/store.zarr", tmp_path / "store.zarr"
    for store in (remote, local):
        concat(layout, inputs[:1], store, join="outer")
    proxy = proxied_s3.proxy
    proxy.fail("503", times=4, method="PUT", every=3)
    proxy.fail("drop", times=2, method="PUT", every=5)
    proxy.fail("503", times=3, method="GET", every=4)
    proxy.fail("drop", times=2, method="GET", every=7)
    result = append(remote, inputs[1:], join="outer")
    assert proxy.injected == 11 and result.verified  # they happened, and were retried
    proxy.clear_failures()
    append(local, inputs[1:], join="outer")
    _same(_read(remote), _read(local))
    assert not has_journal(remote)


KILLED_WHILE_CLEARING = """\
import os, sys
import annlayout.storage.journal as journal
from annlayout import append

def dying(url):  # the store holds the new objects, root last; the journal is not cleared yet
    os._exit(9)

journal._clear = dying
append(sys.argv[1], sys.argv[2:], join="outer")
"""


def test_a_kill_after_the_new_root_keeps_the_finished_append(tmp_path, s3, backend, inputs):
    """Killed once the new root is written but before its journal is cleared: the append
    had finished, and the next append recognises it (digests of the root) rather than undo
    it."""
    prefix = f"{backend}-append-finished"
    remote = f"{s3}/{prefix}/store.zarr"
    concat(_layout(tmp_path, "ml-minibatch"), inputs[:1], remote)
    script = tmp_path / "killed.py"
    script.write_text(KILLED_WHILE_CLEARING)
    args = [sys.executable, script, remote, *map(str, inputs[1:2])]
    assert subprocess.run(args, capture_output=True).returncode == 9
    assert has_journal(remote)
    appended = _objects(remote)
    assert CliRunner().invoke(main, ["inspect", remote]).exit_code == 0  # whole, readable
    assert roll_back(remote) == "finished" and not has_journal(remote)
    assert _objects(remote) == appended
    with pytest.raises(AppendError, match="already appended"):
        append(remote, inputs[1:2], join="outer")
    result = append(remote, inputs[2:], join="outer")
    assert result.n_obs_before == _read(remote).n_obs - result.n_obs_added
    assert _leftovers(s3, prefix) == []  # the killed run's staging went with the next append


def test_append_to_a_whole_bucket_is_refused_in_one_line(s3, backend, inputs):
    refused = CliRunner().invoke(main, ["append", s3, str(inputs[1])])
    assert refused.exit_code == 1 and "a whole bucket" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
