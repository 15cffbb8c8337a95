"""Object storage over a real network: the loopback S3 server behind a proxy that adds
latency, limits bandwidth and injects failures (``proxied_s3`` in conftest.py, NetProxy in
netproxy.py). Retries must make a failing link look like a clean one, a failure that outlasts
them must be an error (never fill values), and a killed upload must leave a store every
reader refuses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import annlayout
from annlayout.base.errors import NotAnnDataError
from annlayout.cli import main
from annlayout.storage.remote import UPLOAD_CONCURRENCY, listing

from .test_stream import blocky, make_input

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")
pytest.importorskip("obstore")


@pytest.mark.parametrize("staging", ["", "off"], ids=["staged", "in-place"])
def test_apply_through_injected_failures_equals_a_clean_run(
    tmp_path, proxied_s3, backend, staging, monkeypatch
):
    """503s and dropped connections on writes and reads during apply (uploaded from a local
    build, or written in place) and during verify."""
    monkeypatch.setenv("ANNLAYOUT_STAGING", staging)
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    proxy = proxied_s3.proxy
    proxy.fail("503", times=4, method="PUT", every=3)
    proxy.fail("drop", times=2, method="PUT", every=5)
    url = f"{proxied_s3.url}/failing.zarr"
    result = annlayout.apply(blocky(), source, url, memory="64KiB", small_element=0)
    assert proxy.injected == 6  # the failures happened, and were retried
    assert result.verified
    proxy.fail("503", times=3, method="GET", every=4)
    proxy.fail("drop", times=2, method="GET", every=7)
    assert annlayout.verify(source, url) == []
    assert proxy.injected == 11
    proxy.clear_failures()
    clean = tmp_path / "clean.zarr"
    annlayout.apply(blocky(), source, clean, memory="64KiB", small_element=0)
    assert annlayout.verify(clean, url) == []


def test_reads_through_injected_failures_equal_local_reads(tmp_path, proxied_s3, backend):
    source = tmp_path / "in.h5ad"
    adata = make_input(source, "csr")
    url = f"{proxied_s3.url}/reads.zarr"
    annlayout.apply("cell-browser", source, url)
    proxy = proxied_s3.proxy
    proxy.rtt = 0.005
    for kind in ("503", "drop", "cut", "500"):
        proxy.fail(kind, times=2, method="GET", path_contains="/X/")
    data = annlayout.open(url)
    rows = np.array([5, 0, 77, 31, 31])
    assert (data.X[rows, :] != adata.X[rows]).nnz == 0
    assert (data.X[:, [1, 8, 9]] != adata.X[:, [1, 8, 9]]).nnz == 0
    assert (data.X[:, :] != adata.X).nnz == 0
    assert proxy.injected >= 6


def test_a_chunk_that_never_arrives_is_an_error_not_fill(
    tmp_path, proxied_s3, backend, monkeypatch
):
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    url = f"{proxied_s3.url}/never.zarr"
    annlayout.apply("ml-minibatch", source, url)
    monkeypatch.setenv("ANNLAYOUT_MAX_RETRIES", "1")  # fail fast
    data = annlayout.open(url)
    data.X.warm()  # indptr and shard indexes arrive
    proxied_s3.proxy.fail("503", times=1000, method="GET", path_contains="/X/data")
    with pytest.raises(Exception):  # noqa: B017  (the client's own error: any, but never zeros)
        data.X[[0, 1, 2], :]


@pytest.mark.parametrize("staging", ["", "off"], ids=["staged", "in-place"])
def test_a_killed_upload_leaves_a_store_every_reader_refuses(
    tmp_path, proxied_s3, backend, staging, monkeypatch
):
    monkeypatch.setenv("ANNLAYOUT_STAGING", staging)
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    url = f"{proxied_s3.url}/killed.zarr"
    proxy = proxied_s3.proxy
    proxy.bandwidth, proxy.rtt = 100_000, 0.05  # bytes per second: the upload takes seconds
    annlayout_exe = str(Path(sys.executable).parent / "annlayout")
    command = [annlayout_exe, "apply", "analysis", str(source), url]
    child = subprocess.Popen(command, env=dict(os.environ), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    # past the first round of concurrent PUTs: some objects have arrived
    while (
        proxy.counts()["PUT"] < UPLOAD_CONCURRENCY + 4
        and child.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert child.poll() is None, child.stderr.read()  # still uploading
    child.send_signal(signal.SIGKILL)
    child.wait()
    proxy.reset()
    with pytest.raises(NotAnnDataError, match=r"incomplete"):
        annlayout.open(url)
    with pytest.raises(NotAnnDataError, match=r"incomplete"):
        annlayout.verify(source, url)
    shown = CliRunner().invoke(main, ["inspect", url])
    assert shown.exit_code == 1 and len(shown.stderr.strip().splitlines()) == 1
    redo = CliRunner().invoke(main, ["apply", "analysis", str(source), url, "--overwrite"])
    assert redo.exit_code == 0, redo.output
    assert annlayout.verify(source, url) == []


def test_a_large_shard_goes_up_in_parts(tmp_path, proxied_s3):
    """obstore uploads objects above 5 MB by multipart: a failed part is retried alone."""
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    x = sp.random(4000, 3000, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    source = tmp_path / "big.h5ad"
    ad.AnnData(x).write_h5ad(source)
    proxy = proxied_s3.proxy
    proxy.fail("503", times=2, method="PUT", path_contains="partNumber=")
    with annlayout.store_backend("obstore"):
        url = f"{proxied_s3.url}/parts.zarr"
        annlayout.apply("ml-minibatch", source, url)
    assert proxy.counts()["multipart_uploads"] >= 1 and proxy.injected == 2
    with annlayout.store_backend("obstore"):
        assert annlayout.verify(source, url) == []


def test_an_upload_cut_short_has_no_root_and_is_refused(tmp_path, proxied_s3, monkeypatch):
    """The root metadata goes up after every other object: while it cannot arrive, the store
    is everything but its root, and readers call it incomplete."""
    from annlayout.storage.remote import listing, upload

    monkeypatch.setenv("ANNLAYOUT_MAX_RETRIES", "0")
    monkeypatch.setenv("ANNLAYOUT_STORE_BACKEND", "obstore")
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    local = tmp_path / "built.zarr"
    annlayout.apply("analysis", source, local)
    url = f"{proxied_s3.url}/rootless.zarr"
    proxied_s3.proxy.fail("503", times=100, method="PUT", path_contains="/rootless.zarr/zarr.json")
    with pytest.raises(Exception):  # noqa: B017  (the client's own error)
        upload(local, url)
    proxied_s3.proxy.clear_failures()
    arrived = listing(url)
    files = [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]
    assert set(arrived) == set(files) - {"zarr.json"}
    with pytest.raises(NotAnnDataError, match="incomplete store"):
        annlayout.open(url)
    shown = CliRunner().invoke(main, ["inspect", url])
    assert shown.exit_code == 1 and "incomplete store" in shown.stderr
    upload(local, url)
    assert annlayout.verify(source, url) == []


def test_scattered_rows_do_not_download_their_shards(tmp_path, proxied_s3):
    """obstore's get_ranges merges ranges within 1 MiB, adjacent ones too: through it, 20 rows
    spread over one shard downloaded the whole shard. annlayout sends the ranges it merged
    itself (at most twice the bytes asked for), so far less crosses the link."""
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    x = sp.random(4000, 3000, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    source = tmp_path / "big.h5ad"
    ad.AnnData(x).write_h5ad(source)
    proxy = proxied_s3.proxy
    with annlayout.store_backend("obstore"):
        url = f"{proxied_s3.url}/scattered.zarr"
        annlayout.apply("ml-minibatch", source, url)
        stored = sum(size for name, size in listing(url).items() if name.startswith("X/"))
        data = annlayout.open(url)
        data.X.warm()
        proxy.rtt = 0.020  # the merge gap follows the link: make merging worth it
        rows = np.linspace(0, 3999, 20).astype(int)
        proxy.reset_counts()
        got = data.X[rows, :]
    assert (got != x[rows]).nnz == 0
    assert proxy.counts()["bytes_down"] < 0.4 * stored
