"""The annlayout command, end to end on real h5ad and zarr stores."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import zarr
from anndata.tests.helpers import assert_equal
from click.testing import CliRunner

import annlayout
from annlayout.apply import stream
from annlayout.cli import main
from annlayout.planning.survey import survey_store
from annlayout.storage.commit import TMP_SUFFIX

from .conftest import SHIPPED, output_name, read_any


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.stderr, result.exception)
    assert "Traceback" not in result.output + result.stderr
    return result


def tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def test_layouts_lists_every_shipped_layout():
    output = run("layouts").output
    for name in SHIPPED:
        assert name in output
    assert "Minibatches of cells for training" in output


def test_layouts_json_lists_name_target_and_description():
    from annlayout.layout.spec import load_layout

    listing = json.loads(run("layouts", "--json").output)
    assert sorted(entry["name"] for entry in listing) == sorted(SHIPPED)
    for entry in listing:
        layout = load_layout(entry["name"])
        assert set(entry) == {"name", "target", "description"}
        assert entry["description"] == " ".join(layout.description.split())
    targets = {entry["name"]: entry["target"] for entry in listing}
    assert targets["h5ad-gzip"] == "h5ad" and targets["anndata-default"] == "zarr v2"


HEAVY = {"numpy", "zarr", "anndata", "pandas", "scipy", "h5py", "dask", "pydantic"}


def imported_by(*args: str) -> tuple[set[str], str]:
    """Top-level packages among HEAVY that ``annlayout ARGS`` imports, and its output."""
    code = textwrap.dedent(
        f"""
        import sys
        from annlayout.cli import main
        try:
            main({list(args)!r})
        except SystemExit:
            pass
        heavy = {{m.split(".")[0] for m in sys.modules}} & {HEAVY!r}
        print("IMPORTED", *sorted(heavy), file=sys.stderr)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True
    )
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("IMPORTED"), done.stderr
    return set(last.split()[1:]), done.stdout


def run_console_script(args: list[str]) -> tuple[bool, str]:
    """``annlayout ARGS`` as the console script runs it, in a process of its own: whether
    dask was imported, and the output."""
    code = textwrap.dedent(
        f"""
        import sys
        from annlayout.cli import run
        try:
            run({args!r})
        except SystemExit as done:
            assert not done.code, done.code
        loaded = {{m.split(".")[0] for m, module in sys.modules.items() if module is not None}}
        print("DASK", "dask" in loaded, file=sys.stderr)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stderr.strip().splitlines()[-1] == "DASK True", done.stdout


@pytest.mark.parametrize("workers", [None, "2"])
def test_apply_runs_without_dask_unless_it_uses_it(stores, tmp_path, workers):
    """anndata imports dask.array whenever dask is installed (~0.8 s a process); the console
    script hides it from commands that do not use it, and the result is the same."""
    output = tmp_path / f"workers-{workers}.zarr"
    args = ["apply", "ml-minibatch", str(stores["h5ad"]), str(output)]
    dask, stdout = run_console_script(args + (["--workers", workers] if workers else []))
    assert dask == (workers is not None)
    assert "verified" in stdout
    assert_equal(read_any(output), read_any(stores["h5ad"]))


def test_concat_and_append_run_without_dask(stores, tmp_path):
    """anndata.concat (which concat and append call) has no use for dask on in-memory data."""
    import anndata as ad

    output = tmp_path / "both.zarr"
    inputs = [str(stores["h5ad"]), str(stores["zarr3"])]
    dask, stdout = run_console_script(["concat", "ml-minibatch", *inputs, str(output)])
    assert not dask and "verified" in stdout
    dask, stdout = run_console_script(["append", str(output), str(stores["zarr2"])])
    assert not dask and "verified" in stdout
    parts = [read_any(Path(p)) for p in [*inputs, str(stores["zarr2"])]]
    assert read_any(output).n_obs == sum(p.n_obs for p in parts)
    expected = ad.concat(parts)
    assert_equal(read_any(output).obs, expected.obs)


@pytest.mark.parametrize(
    "args", [["--help"], ["layouts"], ["layouts", "--json"], ["plan", "--help"]]
)
def test_start_up_imports_nothing_heavy(args):
    """--help and layouts start without numpy, zarr, anndata or pydantic (times: benchmarks/)."""
    heavy, output = imported_by(*args)
    assert heavy == set()
    assert "ml-minibatch" in output if args[0] == "layouts" else "Usage:" in output


def test_layouts_reports_a_broken_shipped_layout_with_its_line(tmp_path, monkeypatch):
    import annlayout.layout.shipped

    for path in annlayout.layout.shipped.shipped_layouts().values():
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "archive.yaml").write_text("annlayout: 1\nname: archive\ntarget: {format: h5}\n")
    monkeypatch.setattr(annlayout.layout.shipped, "layouts_dir", lambda: tmp_path)
    result = run("layouts", code=2)
    assert result.stderr.strip().splitlines() == [
        "error: archive.yaml:3: target.format: must be 'zarr' or 'h5ad' (got 'h5'); "
        "did you mean 'h5ad'?"
    ]


def test_package_names_resolve_on_first_use():
    code = textwrap.dedent(
        """
        import sys, warnings
        filters = list(warnings.filters)
        import annlayout
        assert "pydantic" not in sys.modules and "numpy" not in sys.modules
        assert warnings.filters == filters, "importing annlayout changed the warnings filters"
        assert set(annlayout.__all__) <= set(dir(annlayout))
        from annlayout import Layout, __version__, load_layout, write
        for name in annlayout.__all__:
            assert getattr(annlayout, name) is not None, name
        import annlayout.apply.stream, annlayout.verify.compare, annlayout.write.callback
        # the subpackages do not replace the functions of the same names
        assert callable(annlayout.apply) and callable(annlayout.verify)
        assert callable(annlayout.write) and callable(annlayout.layout_callback)
        assert annlayout.Layout is Layout and load_layout("archive").name == "archive"
        consolidated = [f for f in warnings.filters if f[1] and "Consolidated" in f[1].pattern]
        assert not consolidated, "annlayout silences zarr's warning for every program"
        """
    )
    subprocess.run([sys.executable, "-c", code], env=os.environ, check=True)


def test_write_and_apply_consolidate_without_zarr_warning(tmp_path, stores, small_dataset):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        annlayout.write(small_dataset, tmp_path / "w.zarr", "ml-minibatch")
        annlayout.apply("ml-minibatch", stores["h5ad"], tmp_path / "a.zarr")
    assert not [w for w in caught if "Consolidated metadata" in str(w.message)]
    assert zarr.open_group(tmp_path / "a.zarr", mode="r").metadata.consolidated_metadata


def test_schema_is_json_schema():
    schema = json.loads(run("schema").output)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"annlayout", "name", "rules", "target", "defaults"} <= set(schema["properties"])


@pytest.mark.parametrize("layout", SHIPPED)
@pytest.mark.parametrize("source", ["h5ad", "zarr2", "zarr3"])
def test_plan_and_apply_every_shipped_layout(tmp_path, stores, layout, source):
    src = stores[source]
    before = tree_digest(src)
    plan = json.loads(run("plan", layout, src, "--json").output)
    out = tmp_path / output_name(layout)
    run("apply", layout, src, out, "--quiet")

    assert tree_digest(src) == before  # the input is only read
    assert_equal(read_any(src), read_any(out))
    stored = {e.path: e for e in survey_store(out).elements}
    compared = 0
    for element in plan["elements"]:
        if element["path"] not in stored or element["encoding"] != stored[element["path"]].encoding:
            continue  # anndata versions may re-encode a column (e.g. strings as nullable)
        if element["encoding"] == "null":
            continue  # anndata writes null markers itself and ignores dataset_kwargs
        arrays = {a.name: a for a in stored[element["path"]].arrays}
        for planned in element["arrays"]:
            got = arrays[planned["name"]]
            assert list(got.chunks or []) == list(planned["chunks"] or []), element["path"]
            assert list(got.shards or []) == list(planned["shards"] or []), element["path"]
            assert got.codecs == planned["codecs"], element["path"]
            compared += 1
    assert "X" in stored and compared >= 3


def test_plan_table_shows_elements_and_warnings(stores):
    result = run("plan", "ml-minibatch", stores["h5ad"])
    assert "X (csr)" in result.output
    assert "blosc(lz4,3,shuffle)" in result.output
    assert "obsm/X_pca" in result.output
    # ml-minibatch's dense X rule matches nothing in a sparse dataset: a shipped rule for an
    # element the dataset lacks is no mistake, and plan does not call it one
    assert "matched no element" not in result.stderr


def test_plan_shows_second_orientation(stores):
    plan = json.loads(run("plan", "cell-browser", stores["h5ad"], "--json").output)
    x = next(e for e in plan["elements"] if e["path"] == "X")
    assert x["copies"] == ["csc"]
    assert [a["name"] for a in x["copy_arrays"]] == ["csc/data", "csc/indices", "csc/indptr"]


def test_plan_with_memory_shows_blocks_and_peaks_and_refuses_what_does_not_fit(stores):
    plain = json.loads(run("plan", "cell-browser", stores["h5ad"], "--json").output)
    assert "memory" not in plain  # without --memory: the plan alone, as before
    args = ("plan", "cell-browser", stores["h5ad"], "--whole-below", "0")
    data = json.loads(run(*args, "--memory", "1GiB", "--json").output)
    assert {k: v for k, v in data.items() if k != "memory"} == plain
    x = next(e for e in data["memory"]["elements"] if e["path"] == "X")
    assert x["how"] == "blocks + transpose (csc)" and x["blocks"] >= 2
    assert 0 < x["peak_bytes"] <= 1 << 30 and data["memory"]["violations"] == []
    table = run(*args, "--memory", "1GiB").output
    assert "blocks + transpose (csc)" in table and "per worker" in table
    refused = run(*args, "--memory", "64KiB", code=1)
    assert refused.stderr.startswith("error: X/data: one shard is")
    assert len(refused.stderr.strip().splitlines()) == 1


def test_apply_writes_the_second_orientation(tmp_path, stores):
    out = tmp_path / "cb.zarr"
    run("apply", "cell-browser", stores["h5ad"], out)
    assert "csc/data" in run("inspect", out).output


def test_inspect_shows_layout_and_storage(tmp_path, stores):
    out = tmp_path / "a.zarr"
    run("apply", "archive", stores["h5ad"], out)
    text = run("inspect", out).output
    assert "written with layout archive" in text
    assert "blosc(zstd,1,bitshuffle)" in text
    assert "without annlayout" in run("inspect", stores["zarr3"]).output
    survey = json.loads(run("inspect", out, "--json").output)
    assert survey["provenance"]["layout"] == "archive"


def test_three_mistakes_give_three_located_errors_and_exit_2(tmp_path, stores):
    bad = tmp_path / "cell-browser.yaml"
    bad.write_text(
        textwrap.dedent(
            """\
            annlayout: 1
            name: cell-browser
            rules:
              - match: {path: X}
                chunks: {major: 0}
                codecs: [{name: zstd, level: 99}]
                orientation: [csr, csc]
            """
        )
    )
    for command in (["plan", bad, stores["h5ad"]], ["apply", bad, stores["h5ad"], tmp_path / "o"]):
        result = run(*command, code=2)
        lines = result.stderr.strip().splitlines()
        assert lines == [
            "error: cell-browser.yaml:5: rules[0].chunks.major: must be a positive integer",
            "error: cell-browser.yaml:6: rules[0].codecs[0].level: input should be less than or equal to 22",
            "error: cell-browser.yaml:7: rules[0].orientation: unknown key 'orientation'; did you mean 'orientations'?",
        ]
    assert not (tmp_path / "o").exists()


def test_missing_and_non_anndata_inputs(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    plain = tmp_path / "plain.zarr"
    zarr.open_group(plain, mode="w").create_array("x", shape=(3,), dtype="i4")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    cases = {
        tmp_path / "missing.h5ad": "no such file or directory",
        text: "not an AnnData store",
        plain: "not an AnnData store",
        empty_dir: "not a zarr store",
    }
    for path, expected in cases.items():
        for command in (["plan", "analysis", path], ["inspect", path]):
            result = run(*command, code=1)
            (line,) = result.stderr.strip().splitlines()
            assert line.startswith("error: ") and str(path) in line and expected in line
        run("apply", "analysis", path, tmp_path / "out.zarr", code=1)
        assert not (tmp_path / "out.zarr").exists()


def test_existing_output_is_refused_unless_overwrite(tmp_path, stores):
    out = tmp_path / "o.zarr"
    run("apply", "analysis", stores["h5ad"], out)
    before = tree_digest(out)
    result = run("apply", "archive", stores["h5ad"], out, code=1)
    assert "already exists (use --overwrite" in result.stderr
    assert tree_digest(out) == before
    run("apply", "archive", stores["h5ad"], out, "--overwrite")
    assert survey_store(out).provenance["layout"] == "archive"
    assert [p.name for p in tmp_path.iterdir()] == ["o.zarr"]  # no temporary siblings left


def test_output_inside_input_is_refused(stores):
    result = run("apply", "analysis", stores["zarr3"], stores["zarr3"] / "nested.zarr", code=1)
    assert "inside it" in result.stderr
    run("apply", "analysis", stores["zarr3"], stores["zarr3"], "--overwrite", code=1)


def test_failed_write_leaves_no_output_and_no_temporary(tmp_path, stores, monkeypatch):
    real_finish = stream.Rewriter.finish

    def failing_finish(self, target):
        real_finish(self, target)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stream.Rewriter, "finish", failing_finish)
    result = run("apply", "analysis", stores["h5ad"], tmp_path / "o.zarr", code=1)
    assert "No space left on device" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_from_a_killed_run_is_replaced(tmp_path, stores):
    stale = tmp_path / f".o.zarr{TMP_SUFFIX}"
    stale.mkdir()
    (stale / "junk").write_text("left by kill -9")
    run("apply", "analysis", stores["h5ad"], tmp_path / "o.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]


def test_apply_json_summary_and_codec_pipeline(tmp_path, stores):
    out = tmp_path / "o.zarr"
    result = run(
        "apply", "ml-minibatch", stores["zarr2"], out, "--json", "--codec-pipeline", "zarr"
    )
    summary = json.loads(result.output)
    assert summary["layout"] == "ml-minibatch" and summary["objects"] > 0
    assert summary["output"] == str(out)
    # a small input is read whole (under --whole-below), and that reading is counted too
    assert summary["streamed_elements"] == [] and summary["bytes_read"] > 0


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "inspect", str(tmp_path / "nope.h5ad")])
    assert result.exit_code != 0 and result.exception is not None


def test_generate_writes_a_dataset_and_refuses_to_clobber(tmp_path):
    out = tmp_path / "g.h5ad"
    run("generate", out, "--cells", "300", "--genes", "120")
    adata = read_any(out)
    assert adata.shape == (300, 120) and adata.X.nnz > 0
    run("generate", out, code=1)


def test_generate_a_collection_of_files_that_differ(tmp_path):
    """--files: a directory of h5ad files over one gene universe, each with its own genes (in
    its own order), cell types and repeating barcodes, as real collections come."""
    import anndata as ad

    out = tmp_path / "collection"
    run("generate", out, "--cells", "1001", "--genes", "200", "--nnz-per-cell", "30",
        "--files", "4")  # fmt: skip
    parts = sorted(out.glob("part-*.h5ad"))
    assert [p.name for p in parts] == [f"part-{i:03d}.h5ad" for i in range(4)]
    adatas = [ad.read_h5ad(p) for p in parts]
    assert [a.n_obs for a in adatas] == [251, 250, 250, 250]
    universe = {f"ENSG{i:011d}" for i in range(200)}
    genes = [set(a.var_names) for a in adatas]
    assert all(g <= universe and len(g) == 180 for g in genes)
    assert len(set.intersection(*genes)) < 180 < len(set.union(*genes))
    assert list(adatas[0].var_names) != sorted(adatas[0].var_names)  # an order of its own
    assert adatas[0].obs_names[0] == adatas[1].obs_names[0]  # barcodes repeat
    assert {str(a.obs["sample"].iloc[0]) for a in adatas} == {f"sample_{i:03d}" for i in range(4)}
    assert len({tuple(a.obs["cell_type"].cat.categories) for a in adatas}) > 1
    assert all(a.X.has_sorted_indices and a.X.nnz > 0 for a in adatas)
    outer = ad.concat(adatas, join="outer", index_unique="-")
    assert outer.shape == (1001, len(set.union(*genes)))
    again = tmp_path / "again"
    run("generate", again, "--cells", "1001", "--genes", "200", "--nnz-per-cell", "30",
        "--files", "4")  # fmt: skip
    first = ad.read_h5ad(again / "part-002.h5ad")
    assert (first.X != adatas[2].X).nnz == 0  # deterministic per (part, seed)
    run("generate", out, "--files", "2", code=1)  # exists
    refused = run("generate", tmp_path / "none", "--files", "0", code=1)
    assert "--files 0" in refused.stderr and not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["y.h5ad", "--cells", "-5"], "--cells -5: the number of cells cannot be negative"),
        (["y.h5ad", "--genes", "-1"], "--genes -1: the number of genes cannot be negative"),
        (["y.h5ad", "--nnz-per-cell", "0"], "--nnz-per-cell 0.0: the mean must be above 0"),
        (["runs", "--files", "0"], "--files 0: a collection needs at least one file"),
        (["runs", "--files", "3", "--cells", "2"], "--cells 2 --files 3: fewer cells than files"),
        (["y.h5ad", "--files", "2"], "y.h5ad: with --files OUTPUT is a directory of .h5ad files"),
        (["runs.zarr", "--files", "2"], "give a directory name without an extension, e.g. runs"),
        (["y.txt"], "y.txt: OUTPUT must end in .h5ad or .zarr"),
        (["y"], "y: OUTPUT must end in .h5ad or .zarr (or give --files N"),
    ],
)  # fmt: skip
def test_generate_refuses_sizes_and_outputs_in_one_line_naming_the_option(
    tmp_path, monkeypatch, args, message
):
    monkeypatch.chdir(tmp_path)
    result = run("generate", *args, code=1)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary


def test_generate_zero_cells_makes_an_empty_dataset_that_combines(tmp_path):
    """anndata reads and writes 0 x n: generate makes one, with X_pca, and concat takes it."""
    empty, full = tmp_path / "empty.h5ad", tmp_path / "full.h5ad"
    run("generate", empty, "--cells", "0", "--genes", "50", "--quiet")
    run("generate", full, "--cells", "40", "--genes", "50", "--seed", "1", "--quiet")
    adata = read_any(empty)
    assert adata.shape == (0, 50) and adata.obsm["X_pca"].shape == (0, 50)
    out = tmp_path / "both.zarr"
    run("concat", "ml-minibatch", empty, full, out)
    assert read_any(out).shape == (40, 50) and "X_pca" in read_any(out).obsm


def test_generate_json_and_quiet(tmp_path):
    """--json: one JSON document on stdout; --quiet: nothing; piped: no progress either."""
    single = run("generate", tmp_path / "one.zarr", "--cells", "30", "--genes", "20", "--json")
    summary = json.loads(single.stdout)
    adata = read_any(tmp_path / "one.zarr")
    assert summary["output"] == str(tmp_path / "one.zarr") and summary["files"] == 1
    assert (summary["cells"], summary["genes"], summary["nonzeros"]) == (30, 20, adata.X.nnz)
    assert single.stderr == ""
    many = run("generate", tmp_path / "runs", "--files", "3", "--cells", "31", "--genes", "20",
               "--json")  # fmt: skip
    summary = json.loads(many.stdout)
    parts = [read_any(p) for p in sorted((tmp_path / "runs").glob("*.h5ad"))]
    assert summary["files"] == 3 == len(parts) and summary["cells"] == 31
    assert summary["nonzeros"] == sum(p.X.nnz for p in parts)
    quiet = run("generate", tmp_path / "q.h5ad", "--cells", "30", "--genes", "20", "-q")
    assert quiet.stdout == quiet.stderr == ""


def test_generate_shows_progress_on_a_terminal_only(tmp_path, monkeypatch):
    """Each step on a terminal's stderr (a transient line: recorded as rich is told it);
    nothing when stderr is piped."""
    import rich.progress

    import annlayout.cli

    shown: list[str] = []
    real = rich.progress.Progress.update

    def update(self, task, **fields):
        shown.append(fields.get("description"))
        real(self, task, **fields)

    monkeypatch.setattr(rich.progress.Progress, "update", update)
    monkeypatch.setattr(annlayout.cli.err, "_force_terminal", True)
    run("generate", tmp_path / "runs", "--files", "2", "--cells", "30", "--genes", "20")
    assert shown == [
        "file 1 of 2: generating 15 cells", "file 1 of 2: writing part-000.h5ad",
        "file 2 of 2: generating 15 cells", "file 2 of 2: writing part-001.h5ad",
    ]  # fmt: skip
    shown.clear()
    run("generate", tmp_path / "one.h5ad", "--cells", "30", "--genes", "20")
    assert shown == ["generating 30 cells × 20 genes", f"writing {tmp_path / 'one.h5ad'}"]
    shown.clear()
    monkeypatch.setattr(annlayout.cli.err, "_force_terminal", False)
    piped = run("generate", tmp_path / "more", "--files", "2", "--cells", "30", "--genes", "20")
    assert piped.stderr == "" and shown == []


def readme_commands(*names: str) -> list[list[str]]:
    """The README's command-line example's ``annlayout NAME ...`` lines, as arguments."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("**Command line**", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        args = shlex.split(line, comments=True)
        if args[:1] == ["annlayout"] and args[1] in names:
            commands.append(args[1:])
    return commands


def test_the_readme_collection_example_runs_as_written(tmp_path, monkeypatch):
    """generate --files, concat, generate, append --plan, append: as the README shows them,
    but small."""
    monkeypatch.chdir(tmp_path)
    commands = readme_commands("generate", "concat", "append")
    assert [c[0] for c in commands] == ["generate", "concat", "generate", "append", "append"]
    assert "--plan" in commands[3]  # planned first, then run: the plan writes nothing
    for args in commands:
        if args[0] == "generate":  # fewer cells and genes, the same for every file
            before = ["", *args[:-1]]
            args = [
                str(int(a) // 100) if b == "--cells" else a
                for b, a in zip(before, args, strict=True)
            ]
            args += ["--genes", "200", "--nnz-per-cell", "20"]
        run(*[match for a in args for match in (sorted(glob.glob(a)) if "*" in a else [a])])
    import anndata as ad

    parts = [ad.read_h5ad(p) for p in sorted(Path("runs").glob("*.h5ad"))]
    new = ad.read_h5ad("new-run.h5ad")
    train = ad.read_zarr("train.zarr")
    assert len(parts) == 4 and train.n_obs == sum(p.n_obs for p in parts) + new.n_obs == 250
    assert train.obsm["X_pca"].shape[1] == new.obsm["X_pca"].shape[1]


def test_console_script_end_to_end(tmp_path):
    """The README's first command, through the installed console script."""
    exe = Path(sys.executable).with_name("annlayout")
    data, out = tmp_path / "demo.h5ad", tmp_path / "demo.zarr"
    subprocess.run([exe, "generate", data, "--cells", "500", "--genes", "200"], check=True)
    done = subprocess.run(
        [exe, "apply", "ml-minibatch", data, out], check=True, capture_output=True, text=True
    )
    assert "wrote" in done.stdout
    assert_equal(read_any(data), read_any(out))
    bad = subprocess.run([exe, "plan", "nope", data], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("extra", "args", "message"),
    [
        ("dask", ["--workers", "2"], "--workers needs dask: pip install 'annlayout[dask]'"),
        ("dask", ["--scheduler", "tcp://127.0.0.1:1"], "--scheduler needs dask and distributed: pip install 'annlayout[dask]'"),
        ("s3", [], "needs fsspec and s3fs: pip install 'annlayout[s3]'"),
    ],
)  # fmt: skip
def test_a_feature_without_its_extra_says_which_to_install(
    tmp_path, stores, monkeypatch, extra, args, message
):
    import annlayout.base.optional

    absent = set(annlayout.base.optional.EXTRAS[extra])
    real = annlayout.base.optional.find_spec
    monkeypatch.setattr(
        annlayout.base.optional, "find_spec", lambda name: None if name in absent else real(name)
    )
    source = str(stores["h5ad"]) if extra == "dask" else "s3://bucket/in.zarr"
    output = tmp_path / "out.zarr"
    result = CliRunner().invoke(main, ["apply", "ml-minibatch", source, str(output), *args])
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not output.exists() and not list(tmp_path.iterdir())
