"""concat and apply on a real dask cluster whose workers share no disk with the driver.

One scheduler and two worker processes (``dask scheduler``, ``dask worker``) for the module;
each worker runs under ``unshare --mount`` with a tmpfs over ``/tmp``, so the driver's
temporary files (pytest's tmp_path included) do not exist for it. Inputs and outputs are on
the loopback S3 (moto), the only medium both sides share, as on Slurm, Kubernetes or Coiled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import annlayout
from annlayout.base.errors import IntegrityError, UnreachableError
from annlayout.combine.concat import concat
from annlayout.generate.synthetic import make_part
from annlayout.storage.remote import listing, upload, write_object

from .conftest import read_any

pytest.importorskip("distributed")
pytest.importorskip("s3fs")
pytest.importorskip("obstore")

SRC = str(Path(annlayout.__file__).resolve().parents[1])
# A tmpfs over /tmp, through which only $KEEP (the interpreter's environment and the source,
# when they live under /tmp, as CI's fresh virtualenv does) shows again, bound from the old
# /tmp held meanwhile at a private mount point outside it.
PRIVATE_TMP = """set -e
old=$(mktemp -d /dev/shm/annlayout-old-tmp.XXXXXX)
mount --bind /tmp "$old"
mount -t tmpfs tmpfs /tmp
for dir in $KEEP; do
    mkdir -p "$dir"
    mount --bind "$old/${dir#/tmp/}" "$dir"
done
umount "$old"
rmdir "$old"
cd /  # the driver's working directory may be under the old /tmp (CI's clone): gone here
exec "$@"
"""


def _kept_under_tmp() -> str:
    """What a worker needs from the driver's /tmp: its Python environment and the source."""
    found = {Path(p).resolve() for p in (sys.prefix, SRC)}
    return " ".join(str(p) for p in sorted(found) if p.is_relative_to("/tmp"))


def _private_tmp_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = ["unshare", "--mount", "--propagation", "private", "sh", "-c", PRIVATE_TMP, "sh",
             "true"]  # fmt: skip
    run = subprocess.run(probe, capture_output=True, timeout=30, env={**os.environ, "KEEP": ""})
    return run.returncode == 0


@dataclass
class Cluster:
    address: str
    private_tmp: bool  # each worker has a /tmp of its own (else its own TMPDIR only)


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    """A scheduler and two single-threaded workers (each under a nanny, which restarts a
    worker killed mid-run), started as separate processes with the driver's environment (the
    S3 endpoint and credentials); every process is killed at teardown, whatever happened."""
    from dask.distributed import Client

    logs = tmp_path_factory.mktemp("cluster")
    dask = str(Path(sys.executable).with_name("dask"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    private = _private_tmp_works()
    processes: list[subprocess.Popen[bytes]] = []

    def start(command: list[str], name: str, extra: dict[str, str] | None = None) -> None:
        with open(logs / f"{name}.log", "wb") as log:
            processes.append(subprocess.Popen(
                command, env={**env, **(extra or {})}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # a group of its own: teardown kills its children too
            ))  # fmt: skip

    try:
        scheduler_file = logs / "scheduler.json"
        start([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
               "--scheduler-file", str(scheduler_file)], "scheduler")  # fmt: skip
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert processes[0].poll() is None, (logs / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        time.sleep(0.2)  # written whole before it is read
        address = json.loads(scheduler_file.read_text())["address"]
        for number in range(2):
            worker = [dask, "worker", address, "--nthreads", "1", "--nworkers", "1",
                      "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{number}",
                      "--death-timeout", "60"]  # fmt: skip
            if private:
                wrapped = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           PRIVATE_TMP, "sh", *worker]  # fmt: skip
                start(wrapped, f"worker{number}", {"KEEP": _kept_under_tmp()})
            else:
                own = logs / f"tmp{number}"
                own.mkdir()
                start(worker, f"worker{number}", {"TMPDIR": str(own)})
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield Cluster(address, private)
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for process in processes:
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def remote_inputs(s3, tmp_path_factory):
    """Three zarr inputs on S3 whose genes differ (an outer join has work to do)."""
    root = tmp_path_factory.mktemp("remote-inputs")
    urls, adatas = [], []
    for number in range(3):
        adata = make_part(number, 120 + 30 * number, 60, nnz_per_cell=12, n_pcs=4, seed=3)
        path = root / f"part-{number}.zarr"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata.write_zarr(path)
        url = f"{s3}/cluster/in/part-{number}.zarr"
        upload(path, url)
        urls.append(url)
        adatas.append(ad.read_zarr(path))
    return urls, adatas


def _equals_anndata_concat(output: str, adatas: list[ad.AnnData], **options: object) -> None:
    """``output`` holds anndata.concat of ``adatas`` in the order it records; X compared
    as sparse matrices (never made dense)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ad.concat(adatas, **options)  # type: ignore[call-overload]
        got = ad.read_zarr(output)
    order = np.asarray(got.uns["annlayout_order"]["source_row"])
    expected = expected[order].copy()
    assert list(got.obs_names) == list(expected.obs_names)
    assert list(got.var_names) == list(expected.var_names)
    pd.testing.assert_frame_equal(got.obs, expected.obs)
    assert sp.issparse(got.X) and got.X.nnz == expected.X.nnz
    assert (sp.csr_matrix(got.X) != sp.csr_matrix(expected.X)).nnz == 0


def _no_scratch_left(prefix: str) -> None:
    assert not [key for key in listing(prefix) if ".annlayout-concat" in key]


def test_apply_on_a_cluster_reads_and_writes_s3(cluster, s3, remote_inputs):
    urls, adatas = remote_inputs
    output = f"{s3}/cluster/out/applied.zarr"
    result = annlayout.apply("ml-minibatch", urls[1], output, memory="1MiB", small_element=0,
                             scheduler=cluster.address)  # fmt: skip
    assert result.verified and result.n_blocks > 1
    assert annlayout.verify(urls[1], output) == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ad.read_zarr(output)
    assert (sp.csr_matrix(got.X) != sp.csr_matrix(adatas[1].X)).nnz == 0
    pd.testing.assert_frame_equal(got.obs, adatas[1].obs)


def test_a_path_the_workers_cannot_see_is_refused_before_any_work(
    cluster, s3, remote_inputs, tmp_path
):
    if not cluster.private_tmp:
        pytest.skip("the workers share this machine's /tmp (no unshare --mount here)")
    urls, adatas = remote_inputs
    local = tmp_path / "local.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adatas[0].write_zarr(local)
    output = f"{s3}/cluster/out/refused.zarr"
    with pytest.raises(UnreachableError, match=f"^{local}: the dask worker at .* cannot reach"):
        concat("ml-minibatch", [local, urls[1]], output, scheduler=cluster.address)
    with pytest.raises(UnreachableError, match=f"^{tmp_path / 'scratch'}"):
        concat("ml-minibatch", urls[:2], output, scheduler=cluster.address,
               scratch_at=tmp_path / "scratch")  # fmt: skip
    with pytest.raises(UnreachableError, match=f"^{tmp_path / 'out.zarr'}"):
        annlayout.apply("ml-minibatch", urls[0], tmp_path / "out.zarr", scheduler=cluster.address)
    assert not listing(output) and not (tmp_path / "scratch").exists()


def test_concat_shuffled_outer_join_on_a_cluster_equals_anndata_concat_a_worker_killed(
    cluster, s3, remote_inputs
):
    """concat --shuffle --join outer on the cluster, inputs, output and scratch on S3; the
    worker process running the first of its tasks is killed (SIGKILL) meanwhile: dask reruns
    the task on the other worker (the nanny restarts the killed one), and the store still
    equals anndata.concat's. (One run for both: the module stays within seconds.)"""
    from dask.distributed import Client

    urls, adatas = remote_inputs
    output = f"{s3}/cluster/out/killed.zarr"
    killed: list[str] = []
    stop = threading.Event()

    def kill_one_busy_worker() -> None:
        with Client(cluster.address, timeout=60) as client:
            pids = client.run(os.getpid)
            while not stop.is_set():
                for worker, keys in client.processing().items():
                    if any(str(key).startswith("run_task") for key in keys):
                        os.kill(pids[worker], signal.SIGKILL)
                        killed.append(worker)
                        return
                time.sleep(0.002)

    killer = threading.Thread(target=kill_one_busy_worker, daemon=True)
    killer.start()
    options = {"join": "outer", "index_unique": "-"}
    try:
        result = concat("ml-minibatch", urls, output, shuffle=9, memory="1MiB",
                        scheduler=cluster.address, **options)  # fmt: skip
    finally:
        stop.set()
        killer.join(timeout=60)
    assert killed, "no task was seen running"
    assert result.verified
    _equals_anndata_concat(output, adatas, **options)
    _no_scratch_left(f"{s3}/cluster")  # beside the output while it ran, then removed
    with Client(cluster.address, timeout=60) as client:  # the nanny brought it back
        client.wait_for_workers(2, timeout=60)


def test_a_scratch_on_object_storage_is_removed_when_the_run_fails(s3, remote_inputs, monkeypatch):
    """On this machine's threads too: the tasks' files on S3, then a failure in the driver
    before the inputs are combined; nothing is kept (nothing to resume from)."""
    import annlayout.combine.assembly as assembly

    urls, _ = remote_inputs

    def failing(*args, **kwargs):
        raise IntegrityError("X: made to fail")

    monkeypatch.setattr(assembly, "check_whole_chunks", failing)
    scratch = f"{s3}/cluster/scratch-failing"
    with pytest.raises(IntegrityError, match="made to fail"):
        concat("ml-minibatch", urls, f"{s3}/cluster/out/failing.zarr", shuffle=1, workers=2,
               memory="256KiB", scratch_at=scratch)  # fmt: skip
    assert not listing(scratch)


def test_two_tasks_never_write_the_same_shard(tmp_path, monkeypatch):
    """apply's tasks, as planned, each write whole shards no other task writes; a plan with
    a block moved off a shard boundary, or two blocks sharing a shard, is stopped."""
    import dataclasses

    from annlayout.apply import stream
    from annlayout.execute.tasks import CopyTask

    from .test_stream import blocky, make_input

    checked = []
    original = stream.check_whole_shards

    def planned(tasks, root):  # the plan checked here, while its output is open
        original(tasks, root)
        blocks = [t for t in tasks if isinstance(t, CopyTask)]
        assert len({t.block.target_array for t in blocks}) < len(blocks)  # arrays of many
        written: dict[str, list[tuple[int, int]]] = {}
        for task in tasks:
            for array, start, stop in stream.task_writes(task):
                written.setdefault(array, []).append((start, stop))
        for array, spans in written.items():
            unit = int((root[array].shards or root[array].chunks)[0])
            shards = [at // unit for start, stop in spans if stop > 0
                      for at in range(start, stop, unit)]  # fmt: skip
            assert len(shards) == len(set(shards)), array
        first = next(t for t in blocks if t.block.stop - t.block.start > 1)
        moved = dataclasses.replace(first.block, start=first.block.start + 1)
        with pytest.raises(IntegrityError, match="not whole shards"):
            original([dataclasses.replace(first, block=moved), *tasks], root)
        with pytest.raises(IntegrityError, match="two tasks would write the shard"):
            original([*tasks, first], root)
        checked.append(len(tasks))

    monkeypatch.setattr(stream, "check_whole_shards", planned)
    source = tmp_path / "in.h5ad"
    make_input(source, "csr")
    annlayout.apply(blocky(), source, tmp_path / "out.zarr", memory="64KiB", small_element=0)
    assert checked


def test_cli_scratch_goes_where_asked_and_is_removed(tmp_path, monkeypatch):
    """``--scratch DIR``: the combined inputs and the tasks' files go under DIR (seen while
    they are there), and nothing is left there at the end."""
    from click.testing import CliRunner

    import annlayout.combine.assembly as assembly
    from annlayout.cli import main

    from .test_stream import make_input

    inputs = [tmp_path / "a.h5ad", tmp_path / "b.h5ad"]
    for number, path in enumerate(inputs):
        make_input(path, "csr", seed=number)
    scratch, seen = tmp_path / "scratch", []
    run = assembly.ScatterTask.run

    def watched(self, advance=None):
        seen.append(self.directory)
        return run(self, advance)

    monkeypatch.setattr(assembly.ScatterTask, "run", watched)
    out = tmp_path / "out.zarr"
    done = CliRunner().invoke(main, ["concat", "ml-minibatch", *map(str, inputs), str(out),
                                     "--workers", "2", "--shuffle", "1", "--scratch",
                                     str(scratch), "--quiet"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert seen and all(directory.startswith(f"{scratch}/.out.zarr-") for directory in seen)
    assert list(scratch.iterdir()) == [] and annlayout.verify(out, out) == []


# The CLI, which prints the tasks it hands to dask ("tasks ScatterTask 2") and, with
# HOLD set, is held once X's scatter step is recorded (every scatter task's files on S3, the
# combined arrays not yet made) until a signal arrives: the signal lands at the same point of
# every run, sent from outside as a user's Ctrl-C or a scheduler's SIGTERM would be.
WATCHED_CLI = """import os, sys, time
import annlayout.combine.assembly as assembly
from annlayout.cli import run
from annlayout.storage import commit
create, execute = assembly._create_arrays, assembly.execute
def held(*args, **kwargs):
    print("scattered", flush=True)
    deadline = time.monotonic() + 120
    while os.environ.get("HOLD") and not commit._pending and time.monotonic() < deadline:
        time.sleep(0.01)
    return create(*args, **kwargs)
def told(tasks, *args, **kwargs):
    kinds = sorted({type(task).__name__ for task in tasks})
    print("tasks", *kinds or ["none"], len(tasks), flush=True)
    return execute(tasks, *args, **kwargs)
assembly._create_arrays, assembly.execute = held, told
run(sys.argv[1:])
"""


def _cli(*args: str, hold: bool = False) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
           "HOLD": "1" if hold else ""}  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", WATCHED_CLI, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def _finished(child: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        stdout, stderr = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, stdout, stderr


def _interrupted_after_scatter(args: list[str], signum: int) -> tuple[str, str]:
    """Run the CLI with ``args``, send ``signum`` once its scatter step is recorded; what it
    printed (it exited as the signal says)."""
    child = _cli(*args, hold=True)
    assert child.stdout is not None
    seen = []
    while not seen or seen[-1] != "scattered\n":
        seen.append(child.stdout.readline())
        assert seen[-1], (seen, _finished(child))
    child.send_signal(signum)
    code, stdout, stderr = _finished(child)
    assert code == 128 + signum, stderr
    return "".join(seen) + stdout, stderr


def test_concat_on_a_cluster_interrupted_keeps_its_s3_scratch_and_resumes(
    cluster, s3, remote_inputs
):
    """SIGINT and SIGTERM while concat runs on the cluster with its scratch on S3: the
    scratch is kept as a named checkpoint, the message names it and the command that resumes;
    a run without --resume removes it and says so; --resume continues from it. Both results
    equal anndata.concat, and no scratch is left."""
    urls, adatas = remote_inputs
    output = f"{s3}/cluster/out/resumed.zarr"
    scratch_at = f"{s3}/cluster/scratch-interrupted"
    args = ["concat", "ml-minibatch", *urls, output, "--scheduler", cluster.address,
            "--scratch", scratch_at, "--shuffle", "4", "--join", "outer", "--index-unique", "-",
            "--memory", "1MiB"]  # fmt: skip
    options = {"join": "outer", "index_unique": "-"}

    def kept() -> list[str]:
        return sorted({key.split(".annlayout-concat")[0] for key in listing(scratch_at)})

    printed, stderr = _interrupted_after_scatter([*args, "--quiet"], signal.SIGINT)
    assert "tasks ScatterTask 2\n" in printed  # a task per worker thread
    (checkpoint,) = kept()
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    named = f"{scratch_at}/{checkpoint.rsplit('/', 1)[-1]}.annlayout-concat"
    assert named in lines[0] and "interrupted by SIGINT" in lines[0], stderr
    assert f"annlayout {' '.join([*args, '--quiet'])} --resume continues from it" in lines[0]
    assert not listing(output)

    code, printed, stderr = _finished(_cli(*args))
    assert code == 0, stderr
    assert f"removed {named}" in stderr
    assert "tasks ScatterTask 2\n" in printed  # started clean
    _equals_anndata_concat(output, adatas, **options)
    assert not listing(scratch_at)

    fresh = f"{s3}/cluster/out/resumed-after-sigterm.zarr"
    args[args.index(output)] = fresh
    _, stderr = _interrupted_after_scatter([*args, "--quiet"], signal.SIGTERM)
    assert "interrupted by SIGTERM" in stderr and len(kept()) == 1, stderr
    assert [key for key in listing(scratch_at) if key.endswith("bounds.npy")]
    assert not listing(fresh)
    code, printed, stderr = _finished(_cli(*args, "--resume", "--quiet"))
    assert code == 0, stderr
    # the scatter step is not run again: its files on S3 are what the gather reads (the
    # gather tasks may all have finished before the driver saw the signal: those done skipped)
    assert printed.splitlines()[:2] == ["tasks none 0", "scattered"], printed
    _equals_anndata_concat(fresh, adatas, **options)
    assert not listing(scratch_at)


CORPUS = Path(__file__).parent / "corpus" / "data"


@pytest.mark.parametrize(
    "files",
    [
        ["anndata-0.12.19-denseX-v3.zarr", "anndata-0.13.4-pandas2-denseX-v3.zarr"],
        ["anndata-0.6.22.h5ad", "anndata-0.7.8.h5ad"],
    ],
    ids=["dense-X", "legacy-raw"],
)
def test_concat_on_a_cluster_of_dense_x_and_a_legacy_raw(cluster, s3, files, tmp_path, monkeypatch):
    """A dense X and a legacy raw (anndata < 0.7, read whole by anndata) on the cluster,
    inputs, output and scratch on S3: the driver combines them, in blocks within a quarter of
    --memory, straight into the combined store in the scratch (which the workers, seeing a
    /tmp of their own, read in the layout step); its shuffle's buckets stay on its own disk
    and are gone afterwards. Equal to anndata.concat (X, layers and raw's X)."""
    import tempfile

    import annlayout.combine.concat as concatenate

    driver_tmp = tmp_path / "driver-tmp"
    driver_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(driver_tmp))
    blocks: list[int] = []
    dense_blocks = concatenate.dense_blocks

    def watched(*args, **kwargs):
        for first, block in dense_blocks(*args, **kwargs):
            blocks.append(block.nbytes)
            yield first, block

    monkeypatch.setattr(concatenate, "dense_blocks", watched)
    urls = []
    for name in files:
        url = f"{s3}/cluster/corpus/{name}"
        if name.endswith(".h5ad"):
            write_object(url, (CORPUS / name).read_bytes())
        else:
            upload(CORPUS / name, url)
        urls.append(url)
    output = f"{s3}/cluster/out/{files[0]}-combined.zarr"
    options = {"join": "outer", "index_unique": "-"}
    result = concat("ml-minibatch", urls, output, shuffle=3, memory="256KiB",
                    scheduler=cluster.address, scratch_at=f"{s3}/cluster/scratch-corpus",
                    **options)  # fmt: skip
    assert result.verified
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adatas = [read_any(CORPUS / name) for name in files]
        expected = ad.concat(adatas, **options)  # type: ignore[call-overload]
        got = ad.read_zarr(output)
    expected = expected[np.asarray(got.uns["annlayout_order"]["source_row"])].copy()
    assert list(got.obs_names) == list(expected.obs_names)
    for key in ("X", *expected.layers):
        want = expected.X if key == "X" else expected.layers[key]
        have = got.X if key == "X" else got.layers[key]
        assert sp.issparse(have) == sp.issparse(want), key
        dense = [m.toarray() if sp.issparse(m) else np.asarray(m) for m in (want, have)]
        np.testing.assert_array_equal(*dense, err_msg=key)
    assert (sp.csr_matrix(got.raw.X) != sp.csr_matrix(expected.raw.X)).nnz == 0
    assert not listing(f"{s3}/cluster/scratch-corpus")
    assert list(driver_tmp.iterdir()) == []
    if "denseX" in files[0]:  # combined by the driver, in blocks
        assert len(blocks) > 2 and max(blocks) <= 2**18 // 4
