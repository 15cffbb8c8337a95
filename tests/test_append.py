"""annlayout append against anndata.concat of the store and the new inputs read into memory
(on the store's genes): kept shards are the store's own files, a CSC copy follows, and an
append that is killed or fails leaves the store exactly as it was."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import annlayout
from annlayout import append, concat
from annlayout.base.errors import AppendError
from annlayout.cli import main
from annlayout.generate.synthetic import make_part
from annlayout.reading.reader import open as open_dataset

# X in shards of 4 chunks of 8 cells: a few hundred cells make dozens of shards
SMALL_SHARDS = """\
annlayout: 1
name: small-shards
extends: {base}
rules:
  - match: {{path: [X, layers/*, raw/X], encoding: [csr_matrix, csc_matrix]}}
    chunks: {{major: 8}}
    shards: {{chunks: 4}}
    index_dtype: minimal
    orientations: {orientations}
  - match: {{path: "obsm/*", encoding: array}}
    chunks: {{rows: 16}}
    shards: {{chunks: 4}}
"""


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Four inputs: two h5ad, one zarr, one h5ad; each with a counts layer and X_pca."""
    root = tmp_path_factory.mktemp("parts")
    paths, adatas = [], []
    for i in range(4):
        adata = make_part(i, 120 + 30 * i, 60, nnz_per_cell=12, n_pcs=4, seed=5)
        adata.layers["counts"] = adata.X.copy()
        path = root / (f"part-{i}.zarr" if i == 2 else f"part-{i}.h5ad")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata.write_zarr(path) if i == 2 else adata.write_h5ad(path)
        paths.append(path)
        adatas.append(ad.read_zarr(path) if i == 2 else ad.read_h5ad(path))
    return paths, adatas


def _layout(tmp_path: Path, base: str, orientations: str = "[csr]") -> Path:
    path = tmp_path / "small-shards.yaml"
    path.write_text(SMALL_SHARDS.format(base=base, orientations=orientations))
    return path


def _expected(store_before: ad.AnnData, new: list[ad.AnnData], **options) -> ad.AnnData:
    """anndata's answer: the new inputs combined (label, keys, index_unique), after the
    store's cells, on the store's genes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        added = ad.concat(new, join="outer", **options)
        both = ad.concat([store_before, added], join="outer")
    on_store_genes = both[:, store_before.var_names].copy()
    on_store_genes.obs = both.obs  # a view drops unused categories; the columns do not
    return on_store_genes


def _assert_same(got: ad.AnnData, expected: ad.AnnData) -> None:
    assert list(got.obs_names) == list(expected.obs_names)
    assert list(got.var_names) == list(expected.var_names)
    pd.testing.assert_frame_equal(got.obs, expected.obs)
    assert (sp.csr_matrix(got.X) != sp.csr_matrix(expected.X)).nnz == 0
    for key in expected.layers:
        assert (sp.csr_matrix(got.layers[key]) != sp.csr_matrix(expected.layers[key])).nnz == 0
    for key in got.obsm:
        np.testing.assert_array_equal(np.asarray(got.obsm[key]), np.asarray(expected.obsm[key]))


def _files(store: Path) -> dict[str, tuple[int, str]]:
    """Every file of a store: (inode, sha256 of its bytes)."""
    found = {}
    for directory, _, names in os.walk(store):
        for name in names:
            path = Path(directory) / name
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[path.relative_to(store).as_posix()] = (path.stat().st_ino, digest)
    return found


@pytest.mark.parametrize("base", ["ml-minibatch", "cell-browser"])
def test_append_equals_anndata_concat_and_keeps_full_shards(tmp_path, parts, base):
    paths, adatas = parts
    orientations = "[csr, csc]" if base == "cell-browser" else "[csr]"
    layout = _layout(tmp_path, base, orientations)
    store = tmp_path / "store.zarr"
    concat(layout, paths[:2], store, join="outer", label="batch", keys=["a", "b"])
    before = ad.read_zarr(store)
    files = _files(store)
    options = {"label": "batch", "keys": ["c", "d"], "index_unique": "-"}
    result = append(store, paths[2:], join="outer", memory="256KiB", **options)
    assert result.verified and result.n_obs_added == adatas[2].n_obs + adatas[3].n_obs
    got = ad.read_zarr(store)
    _assert_same(got, _expected(before, adatas[2:], **options))
    # the shards before the last partial one are the store's own files, not rewritten
    after = _files(store)
    data_shards = [k for k in files if k.startswith("X/data/c/")]
    kept = [k for k in data_shards if after.get(k) == files[k]]
    assert len(kept) >= len(data_shards) - 1 >= 5
    assert result.linked_files >= len(kept)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    if base == "cell-browser":  # the CSC copy answers gene queries for the new cells too
        genes = list(got.var_names[[0, 7, 30]])
        dataset = open_dataset(store)
        column = dataset.X[:, genes]
        assert (sp.csr_matrix(column) != sp.csr_matrix(got[:, genes].X)).nnz == 0
        assert CliRunner().invoke(main, ["inspect", str(store)]).exit_code == 0


def test_append_inner_join_needs_the_store_genes(tmp_path, parts):
    paths, adatas = parts
    store = tmp_path / "store.zarr"
    concat("ml-minibatch", paths[:2], store)  # inner: the genes both have
    before = ad.read_zarr(store)
    files = _files(store)
    missing = CliRunner().invoke(main, ["append", str(store), str(paths[2])])
    assert missing.exit_code == 1 and "part-2.zarr" in missing.stderr
    assert "--join outer" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    assert _files(store) == files
    # an input that has them all (part 0 itself, under other names)
    done = CliRunner().invoke(main, ["append", str(store), str(paths[0]), "--index-unique", "-",
                                     "--keys", "again", "--label", "run"])  # fmt: skip
    assert done.exit_code == 0, done.output + done.stderr
    expected = _expected(before, adatas[:1], label="run", keys=["again"], index_unique="-")
    _assert_same(ad.read_zarr(store), expected)
    twice = CliRunner().invoke(main, ["append", str(store), str(paths[0]), "--index-unique", "-",
                                      "--keys", "again", "--label", "run"])  # fmt: skip
    assert twice.exit_code == 1 and "already appended" in twice.stderr


def test_append_dense_layers_raw_and_obsm(tmp_path):
    rng = np.random.default_rng(0)

    def part(n: int, seed: int) -> ad.AnnData:
        rng = np.random.default_rng(seed)
        X = sp.random(n, 40, density=0.2, format="csr", dtype=np.float32, random_state=seed)
        adata = ad.AnnData(
            X=X,
            obs=pd.DataFrame(
                {"kind": pd.Categorical(rng.choice(["x", "y", f"z{seed}"], n))},
                index=[f"c{seed}-{i}" for i in range(n)],
            ),
            var=pd.DataFrame(index=[f"g{j}" for j in range(40)]),
            layers={"dense": rng.normal(size=(n, 40)).astype(np.float32)},
            obsm={"X_umap": rng.normal(size=(n, 2))},
        )
        adata.raw = adata.copy()
        return adata

    first, second = part(300, 1), part(170, 2)
    source, new = tmp_path / "first.h5ad", tmp_path / "second.h5ad"
    first.write_h5ad(source)
    second.write_h5ad(new)
    store = tmp_path / "store.zarr"
    annlayout.apply(_layout(tmp_path, "ml-minibatch"), source, store)
    before = ad.read_zarr(store)
    result = append(store, [new], memory="32KiB")
    assert result.verified
    got = ad.read_zarr(store)
    expected = _expected(before, [ad.read_h5ad(new)])
    _assert_same(got, expected)
    np.testing.assert_array_equal(got.layers["dense"], np.vstack([first.layers["dense"],
                                                                  second.layers["dense"]]))  # fmt: skip
    assert (sp.csr_matrix(got.raw.X) != sp.vstack([first.raw.X, second.raw.X])).nnz == 0
    assert rng is not None


def test_append_refuses_what_it_cannot_do_in_one_line(tmp_path, parts):
    paths, adatas = parts
    plain = tmp_path / "plain.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adatas[0].write_zarr(plain)
    files = _files(plain)
    runner = CliRunner()
    foreign = runner.invoke(main, ["append", str(plain), str(paths[1]), "--join", "outer"])
    assert foreign.exit_code == 1 and "not a store annlayout wrote" in foreign.stderr
    assert len(foreign.stderr.strip().splitlines()) == 1 and _files(plain) == files
    store = tmp_path / "store.zarr"
    concat("ml-minibatch", paths[:1], store)
    files = _files(store)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for args, words in [
        ([str(text)], "notes.txt"),
        ([str(tmp_path / "absent.h5ad")], "absent.h5ad"),
        ([str(paths[1]), "--keys", "a,b"], "--keys"),
    ]:
        bad = runner.invoke(main, ["append", str(store), *args, "--join", "outer"])
        assert bad.exit_code == 1 and words in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    # an embedding of another width: the columns would not line up
    wide = adatas[1].copy()
    wide.obsm["X_pca"] = np.zeros((wide.n_obs, 7), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wide.write_h5ad(tmp_path / "wide.h5ad")
    bad = runner.invoke(
        main, ["append", str(store), str(tmp_path / "wide.h5ad"), "--join", "outer"]
    )
    assert bad.exit_code == 1 and "X_pca" in bad.stderr and "wide.h5ad" in bad.stderr
    assert _files(store) == files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_append_leaves_the_store_as_it_was(tmp_path, parts, monkeypatch):
    import annlayout.combine.append as appending

    paths, _ = parts
    store = tmp_path / "store.zarr"
    concat(_layout(tmp_path, "cell-browser", "[csr, csc]"), paths[:2], store, join="outer")
    files = _files(store)
    monkeypatch.setattr(appending, "_verify", lambda *args: ["X/data[0:8]: made up to fail"])
    with pytest.raises(appending.IntegrityError, match="store left as it was"):
        append(store, paths[2:3], join="outer")
    assert _files(store) == files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_append_killed_leaves_the_store_as_it_was_and_a_rerun_succeeds(tmp_path):
    source, new = tmp_path / "first.h5ad", tmp_path / "second.h5ad"
    X = sp.random(3_000, 1_000, density=0.05, format="csr", dtype=np.float32, random_state=0)
    Y = sp.random(12_000, 1_000, density=0.05, format="csr", dtype=np.float32, random_state=1)
    ad.AnnData(X=X).write_h5ad(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ad.AnnData(X=Y).write_h5ad(new)
    store = tmp_path / "store.zarr"
    layout = _layout(tmp_path, "cell-browser", "[csr, csc]")
    concat(layout, [source], store)
    files = _files(store)
    exe = Path(sys.executable).with_name("annlayout")
    command = [exe, "append", store, new, "--memory", "64MiB", "--quiet"]
    kept = len(os.listdir(store / "X" / "data" / "c"))
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shards = tmp_path / ".store.zarr.annlayout-append" / "X" / "data" / "c"
    deadline = time.monotonic() + 60
    while not (shards.is_dir() and len(os.listdir(shards)) > kept + 20):  # writing new ones
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    assert _files(store) == files
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "first.h5ad", "second.h5ad", "small-shards.yaml", "store.zarr"
    ]  # fmt: skip
    got = ad.read_zarr(store)
    assert (sp.csr_matrix(got.X) != sp.vstack([X, Y]).tocsr()).nnz == 0
    assert CliRunner().invoke(main, ["inspect", str(store)]).exit_code == 0


def _corpus_readable():
    from .test_corpus import CORPUS, READABLE

    return [CORPUS / entry["path"] for entry in READABLE]


@pytest.mark.parametrize("path", _corpus_readable(), ids=lambda p: p.name)
def test_append_a_corpus_file_to_its_own_store(tmp_path, path):
    """Every corpus file (anndata 0.6 to 0.13, scanpy outputs) applied, then appended to
    itself: equal to anndata.concat of the two reads, or refused in one line."""
    from .test_corpus import read_any

    store = tmp_path / "store.zarr"
    concat("analysis", [path], store)
    before = read_any(store)
    files = _files(store)
    result = CliRunner().invoke(main, ["append", str(store), str(path), "--index-unique", "-",
                                       "--keys", "again", "--join", "outer"])  # fmt: skip
    if result.exit_code != 0:
        assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert _files(store) == files
        pytest.skip(f"refused: {result.stderr.strip()}")
    expected = _expected(before, [read_any(path)], index_unique="-", keys=["again"])
    got = read_any(store)
    assert list(got.obs_names) == list(expected.obs_names)
    pd.testing.assert_frame_equal(got.obs, expected.obs)
    if expected.X is not None:
        assert (sp.csr_matrix(got.X) != sp.csr_matrix(expected.X)).nnz == 0


def test_verification_reads_back_what_was_written(tmp_path, parts, monkeypatch):
    """New rows changed on disk after they were written (here: zeroed) fail verification,
    and the store is left as it was."""
    import annlayout.combine.append as appending

    paths, _ = parts
    store = tmp_path / "store.zarr"
    concat(_layout(tmp_path, "ml-minibatch"), paths[:2], store, join="outer")
    files = _files(store)
    rebuild = appending._rebuild_copies

    def corrupt_then_rebuild(tmp, target, *args):
        data = target["X/data"]
        data[data.shape[0] - 5 :] = 0
        return rebuild(tmp, target, *args)

    monkeypatch.setattr(appending, "_rebuild_copies", corrupt_then_rebuild)
    with pytest.raises(appending.IntegrityError, match=r"X: row \d+ does not hold row \d+ of "):
        append(store, paths[2:3], join="outer")
    assert _files(store) == files


def _small(n: int, seed: int, dtype=np.float32, dense: bool = False) -> ad.AnnData:
    X = sp.random(n, 50, density=0.2, format="csr", dtype=np.float32, random_state=seed)
    X = X.astype(dtype)
    return ad.AnnData(
        X=X.toarray() if dense else X,
        obs=pd.DataFrame(index=[f"c{seed}-{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(50)]),
    )


@pytest.mark.parametrize("verify", [True, False])
def test_the_csc_copy_is_planned_again_for_the_grown_matrix(tmp_path, verify):
    """cell-browser's copy holds cell numbers in the minimal dtype scipy indexes with
    (int32), before and after the append; the copy is planned again for the grown matrix."""
    first, second = tmp_path / "a.h5ad", tmp_path / "b.h5ad"
    _small(200, 1).write_h5ad(first)
    _small(100, 2).write_h5ad(second)
    store = tmp_path / "store.zarr"
    annlayout.apply("cell-browser", first, store)
    import zarr

    assert zarr.open_array(store / "X" / "csc" / "indices").dtype == np.int32
    append(store, [second], verify=verify)
    got = ad.read_zarr(store)
    genes = ["g0", "g1", "g17"]
    column = open_dataset(store).X[:, genes]
    assert (sp.csr_matrix(column) != sp.csr_matrix(got[:, genes].X)).nnz == 0
    expected = sp.vstack([_small(200, 1).X, _small(100, 2).X]).tocsr()
    assert (sp.csr_matrix(got.X) != expected).nnz == 0


def test_an_input_sharing_no_gene_is_refused_even_for_an_outer_join(tmp_path):
    """Its cells would be appended as all zeros (a wrong file, or other gene ids)."""
    store, first, other = tmp_path / "store.zarr", tmp_path / "a.h5ad", tmp_path / "other.h5ad"
    _small(60, 1).write_h5ad(first)
    concat("ml-minibatch", [first], store)
    stranger = _small(40, 2)
    stranger.var_names = [f"ENSG{j}" for j in range(50)]
    stranger.write_h5ad(other)
    files = _files(store)
    result = CliRunner().invoke(main, ["append", str(store), str(other), "--join", "outer"])
    assert result.exit_code == 1, result.output
    assert "shares none of its 50 genes" in result.stderr and str(other) in result.stderr
    assert _files(store) == files


def test_append_refuses_lossy_casts_and_follows_a_link_to_the_store(tmp_path):
    ints, floats = tmp_path / "ints.h5ad", tmp_path / "floats.h5ad"
    _small(60, 1, dtype=np.int32, dense=True).write_h5ad(ints)
    _small(40, 2, dense=True).write_h5ad(floats)
    store = tmp_path / "real" / "store.zarr"
    store.parent.mkdir()
    concat("ml-minibatch", [ints], store)
    files = _files(store)
    bad = CliRunner().invoke(main, ["append", str(store), str(floats)])
    assert bad.exit_code == 1 and "floats.h5ad" in bad.stderr and "int32" in bad.stderr
    assert _files(store) == files
    link = tmp_path / "link.zarr"
    link.symlink_to(store)
    _small(30, 3, dtype=np.int32, dense=True).write_h5ad(tmp_path / "more.h5ad")
    append(link, [tmp_path / "more.h5ad"])
    assert link.is_symlink() and ad.read_zarr(store).n_obs == 90


@pytest.mark.parametrize("bug", ["columns", "rows"])
def test_a_wrong_append_fails_verification_against_the_inputs(tmp_path, parts, monkeypatch, bug):
    """The new rows are checked against the inputs read again (their genes found by name),
    not against digests of what was written: a column map off by one, or the inputs' rows
    one off, fails in one line naming the element, and the store is left as it was."""
    import annlayout.combine.append as appending
    import annlayout.combine.concat as concatenate

    paths, _ = parts
    store = tmp_path / "store.zarr"
    concat(_layout(tmp_path, "ml-minibatch"), paths[:2], store, join="outer")
    files = _files(store)
    if bug == "columns":
        maps = appending._gene_maps

        def off_by_one(store, var_names, *args):
            found = maps(store, var_names, *args)
            return [np.where(m >= 0, (m + 1) % len(var_names), m) for m in found]

        monkeypatch.setattr(appending, "_gene_maps", off_by_one)
    else:
        blocks = concatenate.csr_blocks

        def rows_rolled(present, *args, **kwargs):
            for first, ptr, idx, val in blocks(present, *args, **kwargs):
                matrix = sp.csr_matrix((val, idx, ptr), shape=(ptr.size - 1, 10**6))
                rolled = sp.vstack([matrix[-1:], matrix[:-1]]).tocsr()  # each row one down
                yield first, rolled.indptr, rolled.indices, rolled.data

        monkeypatch.setattr(appending, "csr_blocks", rows_rolled)
    with pytest.raises(appending.IntegrityError) as failed:
        append(store, paths[2:3], join="outer")
    message = str(failed.value)
    assert len(message.splitlines()) == 1 and "X: row " in message, message
    assert "store left as it was" in message
    assert _files(store) == files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "set-aside"])
def test_append_killed_inside_the_commit_leaves_a_whole_store_and_the_next_run_mends_it(
    tmp_path, parts, monkeypatch, exchange
):
    """The commit's two steps, killed between them: with an exchange the name holds the old
    store (the new one waits in the named sibling); without one (a filesystem that cannot
    exchange) the old store waits in the sibling. Either way the next run mends it and
    appends, and the store reads whole."""
    import annlayout.storage.commit as atomic

    paths, _ = parts
    store = tmp_path / "store.zarr"
    concat(_layout(tmp_path, "ml-minibatch"), paths[:2], store, join="outer")
    before = ad.read_zarr(store)
    files = _files(store)
    sibling = tmp_path / ".store.zarr.annlayout-old"
    with monkeypatch.context() as patch:
        if exchange:

            def killed(a, b):  # after the new store took the sibling's name
                raise SystemExit(137)

            patch.setattr(atomic, "_exchange", killed)
        else:
            patch.setattr(atomic, "_exchange", lambda a, b: False)
            rename = Path.rename

            def killed_after_setting_aside(self, target):
                done = rename(self, target)
                if self == store and Path(target) == sibling:
                    raise KeyboardInterrupt  # between the two renames
                return done

            patch.setattr(Path, "rename", killed_after_setting_aside)
        with pytest.raises((SystemExit, KeyboardInterrupt)):
            append(store, paths[2:3], join="outer")
    assert sibling.exists()
    if exchange:  # the name never lacked a whole store: the old one
        assert _files(store) == files
        assert ad.read_zarr(store).n_obs == before.n_obs
    else:
        assert not store.exists()
    result = append(store, paths[2:3], join="outer")
    assert any(str(sibling) in note for note in result.notes), result.notes
    got = ad.read_zarr(store)
    assert got.n_obs == before.n_obs + result.n_obs_added and result.verified
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_append_refuses_a_budget_its_shards_cannot_fit_before_reading_any_data(
    tmp_path, monkeypatch
):
    """Planned up front as apply is: X (over --whole-below, so streamed) is one shard of
    2.2M values that a 1 MiB budget cannot hold while it is written; refused in one line,
    before the inputs' cells or matrices are read, and the store is left as it was."""
    import annlayout.combine.append as appending

    store, new = _one_shard_store(tmp_path)
    files = _files(store)

    def read(*args, **kwargs):
        raise AssertionError("an input's data was read before the budget was checked")

    monkeypatch.setattr(appending, "csr_blocks", read)
    monkeypatch.setattr(appending, "small_elements_of", read)
    with pytest.raises(AppendError, match=r"^X/data: one shard is .*more than --memory"):
        append(store, [new], memory="1MiB")
    assert _files(store) == files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


CORPUS_FILE = Path(__file__).parent / "corpus" / "data" / "anndata-0.12.19.h5ad"


def test_append_plan_shows_the_model_append_checks_and_writes_nothing(tmp_path, monkeypatch):
    """`append STORE INPUT --plan` shows the memory model append checks before reading any
    data (one function for both), and leaves the store as it was."""
    import annlayout.combine.append as appending
    from annlayout.combine.append import append_plan

    source = ad.read_h5ad(CORPUS_FILE)
    for key in list(source.obsp):  # cells x cells: append refuses them (and says so)
        del source.obsp[key]
    new = tmp_path / "new.h5ad"
    source.write_h5ad(new)
    store = tmp_path / "store.zarr"
    annlayout.apply("ml-minibatch", new, store)
    files = _files(store)
    args = ["append", str(store), str(new), "--memory", "1MiB", "--plan"]
    shown = CliRunner().invoke(main, args)
    assert shown.exit_code == 0, (shown.output, shown.exception)
    assert "memory: --memory 1.0 MiB" in shown.stdout and "X" in shown.stdout
    as_json = CliRunner().invoke(main, [*args, "--json"])
    assert as_json.exit_code == 0, (as_json.output, as_json.exception)
    planned = json.loads(as_json.stdout)["memory"]
    assert "X" in [e["path"] for e in planned["elements"]]
    assert _files(store) == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.h5ad", "store.zarr"]

    model = append_plan(store, [new], memory="1MiB")
    assert planned == json.loads(json.dumps(model.to_json()))
    checked = []
    grown = appending.grown_memory

    def recording(*args, **kwargs):
        checked.append(grown(*args, **kwargs))
        return checked[-1]

    monkeypatch.setattr(appending, "grown_memory", recording)
    append(store, [new], index_unique="-", memory="1MiB")
    assert [json.loads(json.dumps(m.to_json())) for m in checked] == [planned]


def test_append_plan_refuses_with_appends_own_line(tmp_path):
    """A budget append refuses, --plan refuses too: the same one line, exit 1, no
    traceback, the store as it was."""
    store, new = _one_shard_store(tmp_path)
    files = _files(store)
    args = ["append", str(store), str(new), "--memory", "1MiB"]
    planned = CliRunner().invoke(main, [*args, "--plan"])
    ran = CliRunner().invoke(main, args)
    assert planned.exit_code == ran.exit_code == 1, (planned.output, planned.exception)
    assert planned.stderr.startswith("error: X/data: one shard is")
    assert planned.stderr == ran.stderr and len(planned.stderr.splitlines()) == 1
    assert "Traceback" not in planned.output
    assert _files(store) == files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _one_shard_store(tmp_path):
    """An ml-minibatch store whose X is one shard of 2.2M values (over --whole-below, so
    streamed; more than a 1 MiB budget holds while it is written), and 50 more cells."""
    n_obs, per_row = 11_000, 200
    X = sp.csr_matrix(
        (
            np.ones(n_obs * per_row, dtype=np.float32),
            np.tile(np.arange(0, 2_000, 10, dtype=np.int32), n_obs),
            np.arange(n_obs + 1, dtype=np.int64) * per_row,
        ),
        shape=(n_obs, 2_000),
    )
    source, new = tmp_path / "first.h5ad", tmp_path / "new.h5ad"
    ad.AnnData(X=X).write_h5ad(source)
    ad.AnnData(X=X[:50]).write_h5ad(new)
    store = tmp_path / "store.zarr"
    annlayout.apply("ml-minibatch", source, store)
    return store, new
