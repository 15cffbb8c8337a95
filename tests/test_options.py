"""The options every run shares (base/options.py), the store backend (a per-thread choice,
never written to the environment) and the codec pipeline (storage/pipeline.py, one lock)."""

from __future__ import annotations

import os
import threading
from collections import UserDict

import pytest
import zarr
from click.testing import CliRunner

import annlayout
from annlayout.base.errors import ApplyError, CodecPipelineConflict
from annlayout.base.options import RunOptions
from annlayout.cli import main
from annlayout.storage import pipeline
from annlayout.storage.remote import chosen_backend, remote_zarr_store, store_backend


def test_run_options_are_checked_once():
    options = RunOptions(memory="64MiB", workers=2)
    assert options.budget == 64 << 20 and options.workers == 2
    for bad, named in [({"workers": 0}, "--workers"), ({"memory": "10"}, "--memory"),
                       ({"codec_pipeline": "rust"}, "--codec-pipeline"),
                       ({"store_backend": "boto"}, "--store-backend")]:  # fmt: skip
        with pytest.raises(ApplyError, match=named):
            RunOptions(**bad)
    # the API's keywords go over the options given, through the same checks
    merged = RunOptions.merged(options, memory="1GiB", workers=None)
    assert (merged.budget, merged.workers) == (1 << 30, 2)
    with pytest.raises(ApplyError, match="--workers"):
        RunOptions.merged(options, workers=0)


@pytest.mark.parametrize("command", ["apply", "concat"])
def test_workers_zero_is_refused_in_one_line(stores, tmp_path, command):
    output = tmp_path / "out.zarr"
    inputs = [stores["h5ad"]] * (2 if command == "concat" else 1)
    args = [command, "ml-minibatch", *map(str, inputs), str(output), "--workers", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "--workers 0" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not output.exists()
    with pytest.raises(ApplyError, match="--workers"):
        annlayout.apply("ml-minibatch", stores["h5ad"], output, workers=0)
    planned = CliRunner().invoke(main, ["plan", "ml-minibatch", str(stores["h5ad"]),
                                        "--memory", "1GiB", "--workers", "0"])  # fmt: skip
    assert planned.exit_code == 1 and "--workers 0" in planned.stderr


class _RecordingEnviron(UserDict):
    """os.environ that records every change made to it."""

    def __init__(self, values):
        super().__init__(values)
        self.changes: list[str] = []

    def __setitem__(self, key, value):
        if getattr(self, "changes", None) is not None:
            self.changes.append(key)
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.changes.append(key)
        super().__delitem__(key)


def test_no_run_changes_the_environment(stores, tmp_path, monkeypatch):
    environ = _RecordingEnviron(dict(os.environ))
    environ.changes = []
    monkeypatch.setattr(os, "environ", environ)
    args = ["--store-backend", "fsspec", "apply", "ml-minibatch", str(stores["h5ad"])]
    result = CliRunner().invoke(main, [*args, str(tmp_path / "cli.zarr"), "--workers", "2"])
    assert result.exit_code == 0, (result.output, result.stderr)
    options = RunOptions(workers=2, store_backend="fsspec", memory="64MiB")
    annlayout.apply("ml-minibatch", stores["zarr3"], tmp_path / "api.zarr", options=options)
    with store_backend("obstore"):
        assert chosen_backend() == "obstore"
    assert environ.changes == []


def test_threads_do_not_see_each_others_store_backend():
    pytest.importorskip("obstore")
    pytest.importorskip("s3fs")
    both = threading.Barrier(2)
    seen: dict[str, tuple[str, str]] = {}

    def use(name: str) -> None:
        with store_backend(name):
            both.wait()  # both settings made before either opens
            store = remote_zarr_store("s3://bucket/data.zarr", read_only=True)
            seen[name] = (chosen_backend(), type(store).__name__)
            both.wait()  # neither leaves (and undoes its setting) before both opened

    threads = [threading.Thread(target=use, args=(name,)) for name in ("obstore", "fsspec")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"obstore": ("obstore", "ObjectStore"), "fsspec": ("fsspec", "FsspecStore")}


def test_a_runs_codec_pipeline_is_not_undone_by_another():
    path = pipeline.CODEC_PIPELINES["zarr"]
    before = zarr.config.get("codec_pipeline.path")
    held, release = threading.Event(), threading.Event()

    def run() -> None:
        with pipeline.codec_pipeline("zarr"):
            held.set()
            release.wait()

    thread = threading.Thread(target=run)
    thread.start()
    held.wait()
    try:
        with pipeline.codec_pipeline("zarr"):  # the same pipeline: shared, no waiting
            assert zarr.config.get("codec_pipeline.path") == path
        with (
            pytest.raises(CodecPipelineConflict, match=r"'zarrs'.*'zarr'"),
            pipeline.codec_pipeline("zarrs"),
        ):
            pass
        assert zarr.config.get("codec_pipeline.path") == path  # still the holding run's
    finally:
        release.set()
        thread.join()
    assert zarr.config.get("codec_pipeline.path") == before


def test_arrays_open_with_their_pipeline_while_a_run_holds_another(tmp_path):
    pytest.importorskip("zarrs")
    zarr.create_array(tmp_path / "a.zarr", shape=(4,), dtype="i4")
    opened = {}
    with pipeline.codec_pipeline("zarrs"):

        def open_() -> None:
            with pipeline.opening("zarr"):
                opened["array"] = zarr.open_array(tmp_path / "a.zarr", mode="r")

        thread = threading.Thread(target=open_)
        thread.start()
        thread.join()
        assert zarr.config.get("codec_pipeline.path") == pipeline.CODEC_PIPELINES["zarrs"]
    codecs = type(opened["array"]._async_array.codec_pipeline).__name__
    assert codecs == "BatchedCodecPipeline"
