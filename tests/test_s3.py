"""Object storage: apply, inspect, verify, open and bench against a real S3-protocol server
on loopback (the ``s3`` fixture in conftest.py), through both clients (obstore, fsspec)."""

from __future__ import annotations

import json
import warnings

import anndata as ad
import numpy as np
import pytest
import zarr
from anndata.tests.helpers import assert_equal
from click.testing import CliRunner

import annlayout
from annlayout.apply import ApplyError, stream
from annlayout.base.errors import NotAnnDataError
from annlayout.cli import main
from annlayout.storage.remote import filesystem

from .test_stream import blocky, make_input

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")
pytest.importorskip("obstore")


pytestmark = pytest.mark.usefixtures("backend")  # every test through each client


def test_round_trip_through_s3(tmp_path, s3, backend):
    source = tmp_path / "in.h5ad"
    adata = make_input(source, "csr")
    remote = f"{s3}/{backend}/round.zarr"
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


@pytest.mark.parametrize("staging", ["", "off"], ids=["staged", "in-place"])
def test_failed_remote_apply_removes_what_it_wrote(tmp_path, s3, backend, staging, monkeypatch):
    monkeypatch.setenv("ANNLAYOUT_STAGING", staging)
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    remote = f"{s3}/{backend}/{staging or 'staged'}-failed.zarr"

    def failing_finish(self, target):
        raise OSError(5, "connection reset")

    monkeypatch.setattr(stream.Rewriter, "finish", failing_finish)
    with pytest.raises(OSError, match="connection reset"):
        annlayout.apply(blocky(), source, remote, memory="64KiB", small_element=0)
    assert not filesystem(remote).exists(remote)


@pytest.mark.parametrize("staging", ["", "off"], ids=["staged", "in-place"])
def test_a_failed_rewrite_leaves_the_existing_store_whole(
    tmp_path, s3, backend, staging, monkeypatch
):
    """With staging the old store is untouched until the new one is built and verified;
    in place, the old store is removed first and the failed run removes what it wrote."""
    monkeypatch.setenv("ANNLAYOUT_STAGING", staging)
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    remote = f"{s3}/{backend}/{staging or 'staged'}-kept.zarr"
    annlayout.apply("analysis", source, remote)

    def failing_finish(self, target):
        raise OSError(5, "connection reset")

    monkeypatch.setattr(stream.Rewriter, "finish", failing_finish)
    with pytest.raises(OSError, match="connection reset"):
        annlayout.apply("cell-browser", source, remote, overwrite=True)
    if staging == "off":
        assert not filesystem(remote).exists(remote)
    else:
        assert annlayout.verify(source, remote) == []
        survey = json.loads(CliRunner().invoke(main, ["inspect", remote, "--json"]).output)
        assert survey["provenance"]["layout"] == "analysis"


@pytest.mark.parametrize("existing", [False, True], ids=["new", "replacing"])
def test_objects_go_up_while_verifying_but_a_failed_verification_leaves_no_store(
    tmp_path, s3, backend, existing, monkeypatch
):
    """A staged apply sends every object but the root while it verifies its local build; a
    verification that fails removes them and never sends the root. A store already at the
    URL is replaced only by one verified: then nothing goes up early."""
    import time

    from annlayout.storage.remote import listing
    from annlayout.verify import compare as verify
    from annlayout.verify.compare import VerifyReport

    monkeypatch.setenv("ANNLAYOUT_STAGING", "")
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    remote = f"{s3}/{backend}/verified-{'replacing' if existing else 'new'}.zarr"
    if existing:
        annlayout.apply("analysis", source, remote)
    seen: list[dict[str, int]] = []

    def failing_verification(source, rewritten, *, memory):
        deadline = time.monotonic() + 30
        while not existing and len(listing(remote)) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)  # the objects are on their way meanwhile
        seen.append(listing(remote))
        return VerifyReport(differences=["X: values differ"])

    with monkeypatch.context() as patched, pytest.raises(ApplyError, match="verification failed"):
        patched.setattr(verify, "verify_report", failing_verification)
        annlayout.apply("cell-browser", source, remote, overwrite=existing)
    if existing:
        assert annlayout.verify(source, remote) == []
        survey = json.loads(CliRunner().invoke(main, ["inspect", remote, "--json"]).output)
        assert survey["provenance"]["layout"] == "analysis"
    else:
        assert len(seen[0]) >= 5 and "zarr.json" not in seen[0]
        assert listing(remote) == {}


def test_incomplete_remote_store_is_refused(tmp_path, s3, backend):
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    remote = f"{s3}/{backend}/partial.zarr"
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


def test_missing_remote_input(tmp_path, s3, backend):
    with pytest.raises(NotAnnDataError, match="no zarr store there"):
        annlayout.apply("analysis", f"{s3}/{backend}/nothing.zarr", tmp_path / "o.zarr")


def test_the_two_clients_read_and_write_the_same_store(tmp_path, s3, backend):
    """What one client wrote, the other reads equal: apply, verify, open, and bench's counted
    requests (annlayout's own reads, so they do not depend on the client)."""
    source = tmp_path / "in.h5ad"
    adata = make_input(source, "csr")
    other = "fsspec" if backend == "obstore" else "obstore"
    remote = f"{s3}/{backend}/both.zarr"
    annlayout.apply("cell-browser", source, remote, overwrite=True)
    with annlayout.store_backend(other):
        assert annlayout.verify(source, remote) == []
        data = annlayout.open(remote)
        rows = np.array([3, 1, 40, 7])
        assert (data.X[rows, :] != adata.X[rows]).nnz == 0
        assert (data.X[:, [2, 5]] != adata.X[:, [2, 5]]).nnz == 0
        assert list(data.obs.index) == list(adata.obs_names)


def test_bench_counts_the_same_requests_through_either_client(tmp_path, s3, backend, monkeypatch):
    from annlayout.bench import load_workload, parse_storage, run_bench
    from annlayout.storage.chunks import MIN_GAP, Link

    # the merge gap follows timings measured during the run: pinned, both clients merge alike
    monkeypatch.setattr(Link, "gap", property(lambda self: MIN_GAP))
    # Each client's bench writes its own candidate store, and zarrs places a shard's chunks
    # in the order they finish encoding (two applies of one input give shards of one size but
    # different bytes). Neighbouring chunks of a query may then lie apart and merge into one
    # more request, or carry other gap bytes: counts are compared within a tenth (at least one
    # request) per pattern, bytes not at all.

    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    counted = {}
    for client in ("obstore", "fsspec"):
        with annlayout.store_backend(client):
            result = run_bench(
                source,
                load_workload("cell-browser"),
                layouts=["cell-browser"],
                storage=parse_storage(f"{s3}/{backend}/bench-{client}"),
                workdir=tmp_path / client,
            )
        counted[client] = result.candidates[0].summary()["patterns"]
    by_obstore, by_fsspec = _requests(counted["obstore"]), _requests(counted["fsspec"])
    assert by_obstore and by_obstore.keys() == by_fsspec.keys()
    for pattern, requests in by_obstore.items():
        slack = max(1, requests // 10)
        assert abs(requests - by_fsspec[pattern]) <= slack, (pattern, requests, by_fsspec[pattern])


def _requests(patterns) -> dict[str, int]:
    return {p["pattern"]: p["requests"] for p in patterns if p["reader"] == "annlayout"}


def test_store_backend_option_of_the_cli(tmp_path, s3, backend):
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    remote = f"{s3}/{backend}/cli.zarr"
    runner = CliRunner()
    applied = runner.invoke(
        main, ["--store-backend", backend, "apply", "analysis", str(source), remote]
    )
    assert applied.exit_code == 0, applied.output
    shown = runner.invoke(main, ["--store-backend", backend, "inspect", remote])
    assert shown.exit_code == 0 and "analysis" in shown.output
    bad = runner.invoke(main, ["--store-backend", "ftp", "inspect", remote])
    assert bad.exit_code == 2 and "ftp" in bad.output


def test_removal_takes_the_root_first(tmp_path, s3, backend, monkeypatch):
    """A removal cut short must not leave a root whose elements are half gone."""
    from annlayout.storage.remote import ROOT_METADATA, listing, remove

    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    remote = f"{s3}/{backend}/removed.zarr"
    annlayout.apply("analysis", source, remote, overwrite=True)
    assert "zarr.json" in listing(remote) and len(listing(remote)) > 5
    first: list[str] = []
    if backend == "obstore":
        import obstore

        real = obstore.delete

        def recording(client, paths):
            first.extend([paths] if isinstance(paths, str) else paths[:1])
            return real(client, paths)

        monkeypatch.setattr(obstore, "delete", recording)
    else:
        fs = filesystem(remote)
        real_rm = fs.rm

        def recording_rm(path, *args, **kwargs):
            first.extend([path] if isinstance(path, str) else path[:1])
            return real_rm(path, *args, **kwargs)

        monkeypatch.setattr(fs, "rm", recording_rm)
    remove(remote)
    assert first and first[0].rpartition("/")[2] in ROOT_METADATA
    assert listing(remote) == {}
