"""Shared fixtures: real AnnData objects and real h5ad/zarr stores on disk."""

from __future__ import annotations

import os
import socket
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pytest
from anndata.tests.helpers import GEN_ADATA_NO_XARRAY_ARGS, gen_adata

from annlayout.generate.synthetic import make_dataset
from annlayout.layout.spec import shipped_layouts
from annlayout.storage.remote import filesystem

SHIPPED = sorted(shipped_layouts())


@pytest.fixture(autouse=True)
def _quiet_anndata():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*autosharding.*")
        yield


def full_adata(shape=(40, 25), seed=0) -> ad.AnnData:
    """Every element type gen_adata makes that anndata can write, plus raw."""
    adata = gen_adata(shape, random_state=np.random.default_rng(seed), **GEN_ADATA_NO_XARRAY_ARGS)
    adata.raw = adata.copy()
    return adata


@pytest.fixture(scope="session")
def small_dataset() -> ad.AnnData:
    return make_dataset(600, 300, nnz_per_cell=40, n_pcs=8, seed=1)


@pytest.fixture(scope="session")
def stores(tmp_path_factory, small_dataset) -> dict[str, Path]:
    """The same small dataset as h5ad, zarr v2 and zarr v3, written by plain anndata."""
    root = tmp_path_factory.mktemp("inputs")
    h5ad, z2, z3 = root / "in.h5ad", root / "in2.zarr", root / "in3.zarr"
    small_dataset.write_h5ad(h5ad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ad.settings.override(zarr_write_format=2):
            small_dataset.write_zarr(z2)
        with ad.settings.override(zarr_write_format=3):
            small_dataset.write_zarr(z3)
    return {"h5ad": h5ad, "zarr2": z2, "zarr3": z3}


def output_name(layout: str) -> str:
    from annlayout.layout.spec import load_layout

    return "out.h5ad" if load_layout(layout).target.format == "h5ad" else "out.zarr"


def read_any(path: Path) -> ad.AnnData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ad.read_h5ad(path) if str(path).endswith(".h5ad") else ad.read_zarr(path)


def assert_matches_plan(plans, store: Path) -> None:
    """Every planned array exists in ``store`` with the planned dtype, chunks, shards, codecs."""
    from annlayout.planning.survey import survey_store

    survey = {e.path: e for e in survey_store(store).elements}
    checked = 0
    for path, plan in plans.items():
        if plan.encoding == "null":
            continue  # anndata writes null markers itself and ignores dataset_kwargs
        assert path in survey, f"{path} planned but not written"
        stored = {a.name: a for a in survey[path].arrays}
        for array in (*plan.arrays, *plan.copy_arrays):
            got = stored[array.name]
            where = f"{path}/{array.name}"
            if array.dtype != "string":
                assert got.dtype == array.dtype, where
            assert got.chunks == array.chunks, f"{where}: chunks {got.chunks} != {array.chunks}"
            assert got.shards == array.shards, f"{where}: shards {got.shards} != {array.shards}"
            assert got.codecs == array.codecs, f"{where}: codecs {got.codecs} != {array.codecs}"
            checked += 1
    assert checked


@pytest.fixture(scope="session")
def moto_port():
    """A real S3-protocol server (moto) on a free loopback port, for the whole session."""
    moto_server = pytest.importorskip("moto.server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield port
    finally:
        server.stop()


@contextmanager
def _environment(values: dict[str, str]):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _aws(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }


@pytest.fixture(scope="session")
def s3(moto_port):
    """The moto server's bucket ``annlayout-test``, for the whole session.

    The AWS environment variables point at it: clients read credentials and the endpoint from
    the environment, as they do against real object storage.
    """
    s3fs = pytest.importorskip("s3fs")
    with _environment(_aws(f"http://127.0.0.1:{moto_port}")):
        s3fs.S3FileSystem.clear_instance_cache()  # cached clients know no endpoint but AWS's
        filesystem("s3://annlayout-test").mkdir("annlayout-test")
        try:
            yield "s3://annlayout-test"
        finally:
            s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def s3_proxy(moto_port):
    """A NetProxy (tests/netproxy.py) in front of the moto server: latency, bandwidth and
    failures on real sockets, and requests counted by kind."""
    from .netproxy import NetProxy

    with NetProxy("127.0.0.1", moto_port) as proxy:
        yield proxy


@pytest.fixture(params=["obstore", "fsspec"])
def backend(request, monkeypatch):
    """The test runs through each object-storage client, as ``--store-backend`` chooses it."""
    monkeypatch.setenv("ANNLAYOUT_STORE_BACKEND", request.param)
    return request.param


@dataclass
class Proxied:
    url: str  # s3://annlayout-proxied/<this test's prefix>
    proxy: Any


@pytest.fixture
def proxied_s3(s3_proxy, request):
    """For one test: every client reaches moto through the proxy (link reset before and
    after), under a prefix of its own in the bucket ``annlayout-proxied``."""
    s3fs = pytest.importorskip("s3fs")
    s3_proxy.reset()
    with _environment(_aws(s3_proxy.url)):
        s3fs.S3FileSystem.clear_instance_cache()
        fs = filesystem("s3://annlayout-proxied")
        if not fs.exists("annlayout-proxied"):
            fs.mkdir("annlayout-proxied")
        s3_proxy.reset_counts()  # the test counts its own requests
        name = "".join(c if c.isalnum() else "-" for c in request.node.name)
        try:
            yield Proxied(f"s3://annlayout-proxied/{name}", s3_proxy)
        finally:
            s3_proxy.reset()
            s3fs.S3FileSystem.clear_instance_cache()
