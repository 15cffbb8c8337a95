"""Object storage: apply, inspect and verify against a real S3-protocol server on loopback
(the ``s3`` fixture in conftest.py)."""

from __future__ import annotations

import json
import warnings

import anndata as ad
import pytest
import zarr
from anndata.tests.helpers import assert_equal
from click.testing import CliRunner

import annlayout
from annlayout.cli import main
from annlayout.errors import NotAnnDataError
from annlayout.rewrite import ApplyError, stream
from annlayout.stores import filesystem

from .test_stream import blocky, make_input

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")


def test_round_trip_through_s3(tmp_path, s3):
    source = tmp_path / "in.h5ad"
    adata = make_input(source, "csr")
    remote = f"{s3}/round.zarr"
    result = annlayout.apply(blocky(), source, remote, memory="64KiB", small_element=0)
    assert result.verified and result.n_blocks > 10 and result.bytes_written > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_equal(adata, ad.read_zarr(remote))
    assert annlayout.verify(source, remote) == []

    survey = json.loads(CliRunner().invoke(main, ["inspect", remote, "--json"]).output)
    assert survey["provenance"]["layout"] == "blocky" and survey["provenance"]["complete"]

    back = tmp_path / "back.zarr"
    annlayout.apply("ml-minibatch", remote, back)
    assert annlayout.verify(source, back) == []
    with pytest.raises(ApplyError, match="already exists"):
        annlayout.apply(blocky(), source, remote)


def test_failed_remote_apply_removes_what_it_wrote(tmp_path, s3, monkeypatch):
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    remote = f"{s3}/failed.zarr"

    def failing_finish(self, target):
        raise OSError(5, "connection reset")

    monkeypatch.setattr(stream.Rewriter, "finish", failing_finish)
    with pytest.raises(OSError, match="connection reset"):
        annlayout.apply(blocky(), source, remote, memory="64KiB", small_element=0)
    assert not filesystem(remote).exists(remote)


def test_incomplete_remote_store_is_refused(tmp_path, s3):
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    remote = f"{s3}/partial.zarr"
    annlayout.apply("analysis", source, remote)
    # what a killed apply leaves on an object store: everything but the final attributes
    group = zarr.open_group(remote, mode="r+", use_consolidated=False)
    group.attrs["annlayout"] = {"complete": False}
    zarr.consolidate_metadata(remote)
    with pytest.raises(NotAnnDataError, match="incomplete annlayout store"):
        annlayout.verify(source, remote)
    result = CliRunner().invoke(main, ["inspect", remote])
    assert result.exit_code == 1 and "incomplete annlayout store" in result.stderr
    annlayout.apply("analysis", source, remote, overwrite=True)  # a rerun succeeds
    assert annlayout.verify(source, remote) == []


def test_missing_remote_input(tmp_path, s3):
    with pytest.raises(NotAnnDataError, match="no zarr store there"):
        annlayout.apply("analysis", f"{s3}/nothing.zarr", tmp_path / "o.zarr")
