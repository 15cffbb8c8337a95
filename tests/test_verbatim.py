"""Small elements copied as stored (annlayout.apply.verbatim) against anndata's own writer.

For every corpus file this stack reads and every zarr layout: where the input may be copied as
stored, the output must be the store that writing through anndata and the layout's callback
makes, node for node: the same groups and arrays, attributes, dtypes, shapes, chunks, shards,
codecs and values. Where it may not, the reason is a known one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import annlayout
from annlayout.apply import stream
from annlayout.apply.verbatim import AsStoredPlan, plan_as_stored
from annlayout.generate.synthetic import make_dataset
from annlayout.storage.stores import open_store

from .test_corpus import CORPUS, PANDAS3, READABLE, assert_same, read_any

#: zarr v2; v3 sharded (index dtypes narrowed); v3 with a CSC copy of X
LAYOUTS = ["anndata-default", "ml-minibatch", "cell-browser"]
#: enough of the corpus is copied as stored for the comparison to mean something
MIN_COPIED = 8  # of the 15 or so each layout gets


def write(adata: Any, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_zarr(path)


def plans_of(layout: str, source: Path) -> dict[str, Any]:
    return {e.path: e for e in annlayout.plan(layout, source).elements}


def as_stored(layout: str, source: Path) -> AsStoredPlan:
    root = open_store(source)
    try:
        return plan_as_stored(root, plans_of(layout, source), large=lambda path, node: False)
    finally:
        if hasattr(root, "close"):
            root.close()


def tree(path: Path) -> dict[str, Any]:
    """Every node of a zarr store: attributes and, for arrays, metadata and values."""
    nodes: dict[str, Any] = {}

    def walk(group: Any, prefix: str) -> None:
        for key in sorted(group.keys()):
            node, name = group[key], f"{prefix}{key}"
            attributes = {k: v for k, v in node.attrs.asdict().items() if k != "annlayout"}
            if isinstance(node, zarr.Group):
                nodes[name] = ("group", attributes)
                walk(node, f"{name}/")
            else:
                meta = node.metadata.to_dict()
                meta.pop("attributes", None)
                if not node.shape:  # written whole: its fill value is never read
                    meta.pop("fill_value", None)
                nodes[name] = (
                    "array",
                    attributes,
                    json.dumps(meta, sort_keys=True),
                    np.asarray(node[...]),
                )

    walk(zarr.open_group(path, mode="r"), "")
    return nodes


def assert_same_tree(a: dict[str, Any], b: dict[str, Any], where: str) -> None:
    assert sorted(a) == sorted(b), f"{where}: nodes {sorted(set(a) ^ set(b))}"
    for name, first in a.items():
        second = b[name]
        assert first[:3] == second[:3], f"{where}{name}: {first[:3]} != {second[:3]}"
        if first[0] == "array":
            x, y = first[3], second[3]
            assert x.shape == y.shape and x.dtype == y.dtype, f"{where}{name}"
            parent, _, part = name.rpartition("/")
            if part == "values" and str(a[parent][1].get("encoding-type")).startswith("nullable"):
                present = ~a[f"{parent}/mask"][3]  # what is under the mask is nobody's value
                x, y = x[present], y[present]
            same = (
                x.tolist() == y.tolist()
                if x.dtype.kind in "OTU"
                else np.array_equal(x, y, equal_nan=x.dtype.kind in "fc")
            )
            assert same, f"{where}{name}: values differ"


def through_anndata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "plan_as_stored", lambda *_: AsStoredPlan("asked for by the test"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_copied_as_stored_equals_anndatas_write(tmp_path, monkeypatch, layout):
    """Each corpus file with one of the layouts, in turn (every pair would take minutes)."""
    copied = 0
    for entry in READABLE[LAYOUTS.index(layout) :: len(LAYOUTS)]:
        source = CORPUS / entry["path"]
        if as_stored(layout, source).refused is not None:
            continue
        copied += 1
        where = f"{entry['file']} -> {layout}: "
        out = tmp_path / f"{entry['file']}-verbatim.zarr"
        annlayout.apply(layout, source, out, memory="256MiB", small_element="64KiB", verify=False)
        with monkeypatch.context() as patched:
            through_anndata(patched)
            reference = tmp_path / f"{entry['file']}-anndata.zarr"
            annlayout.apply(
                layout, source, reference, memory="256MiB", small_element="64KiB", verify=False
            )
        # what anndata reads from it is test_corpus's (which runs this path too)
        assert_same_tree(tree(out), tree(reference), where)
    assert copied >= MIN_COPIED, f"only {copied} corpus files were copied as stored"


def test_a_copied_apply_never_imports_anndata(tmp_path):
    """The point of copying as stored: importing anndata is most of a small apply."""
    source = tmp_path / "in.zarr"
    write(make_dataset(300, 80, nnz_per_cell=10, n_pcs=4), source)
    assert as_stored("ml-minibatch", source) == AsStoredPlan()  # all of it copied as stored
    script = (
        "import sys, annlayout\n"
        f"annlayout.apply('ml-minibatch', {str(source)!r}, {str(tmp_path / 'out.zarr')!r},"
        " verify=False)\n"
        "assert 'anndata' not in sys.modules and 'pandas' not in sys.modules, 'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_same(read_any(source), read_any(tmp_path / "out.zarr"))


@pytest.mark.parametrize(
    ("name", "refused", "unit"),
    [
        ("anndata-0.7.8.h5ad", "__categories", None),  # a legacy form: all through anndata
        ("scanpy-pbmc68k_reduced.h5ad", "compound dataset", None),
        ("anndata-0.12.19-awkward-v3.zarr", None, ("obsm/ragged", "awkward-array")),
        ("anndata-0.12.19.h5ad", None, ("uns/rank_genes_groups/pvals", "rec-array")),
        # nested categories; on pandas 3 the string index comes first
        ("anndata-0.11.4.zarr", None, ("obs", "string column" if PANDAS3 else "obs/note: parts")),
    ],
)
def test_what_is_not_copied_as_stored_says_why(name, refused, unit):
    source = CORPUS / "data" / name
    if not any(entry["path"].endswith(name) for entry in READABLE):
        pytest.skip(f"{name} is not read by this stack")
    copy = as_stored("ml-minibatch", source)
    if refused is not None:
        assert copy.refused is not None and refused in copy.refused, copy
    else:
        assert copy.refused is None
        path, reason = unit
        assert reason in copy.units[path], copy.units


def test_an_annlayout_output_is_written_through_anndata(tmp_path):
    source = tmp_path / "in.zarr"
    write(make_dataset(200, 50, nnz_per_cell=10, n_pcs=4), source)
    first = tmp_path / "first.zarr"
    annlayout.apply("ml-minibatch", source, first)
    assert "annlayout output" in (as_stored("cell-browser", first).refused or "")
    second = tmp_path / "second.zarr"
    assert annlayout.apply("cell-browser", first, second).verified


def _extra_attributes(f: Any) -> None:
    f["obs"].attrs["creator"] = "a lab pipeline"  # not anndata's: not kept
    f["obsm/X_pca"].attrs["_ARRAY_DIMENSIONS"] = ["cell", "pc"]


def _wide_codes(f: Any) -> None:
    codes = f["obs/cell_type/codes"][...].astype(np.int32)  # anndataR-style; pandas: int8
    del f["obs/cell_type/codes"]
    f["obs/cell_type"].create_dataset("codes", data=codes)
    f["obs/cell_type/codes"].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})


def _integer_index(f: Any) -> None:
    n = f["obs"].attrs["_index"]
    size = f[f"obs/{n}/values" if "values" in f[f"obs/{n}"] else f"obs/{n}"].shape[0]
    del f[f"obs/{n}"]
    f["obs"].create_dataset(n, data=np.arange(size))  # anndata reads it as strings
    f[f"obs/{n}"].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})


def _zero_d_array(f: Any) -> None:
    f["uns"].create_dataset("zero_d", data=np.float64(2.5))  # anndata writes a scalar back
    f["uns/zero_d"].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})


def _unencoded_group(f: Any) -> None:
    f["uns"].create_group("notes").create_dataset("n", data=np.arange(3))


@pytest.mark.parametrize(
    ("change", "unit", "refused"),
    [
        (_extra_attributes, None, None),
        (_wide_codes, "obs", None),
        (_integer_index, None, "obs/_index: an index that is not strings"),
        (_zero_d_array, "uns/zero_d", None),
        (_unencoded_group, None, "uns/notes: None None"),
    ],
)
def test_what_anndata_would_change_is_left_to_anndata(tmp_path, monkeypatch, change, unit, refused):
    """Inputs the corpus lacks: each made from an anndata h5ad by one change with h5py."""
    import h5py

    source = tmp_path / "in.h5ad"
    adata = make_dataset(200, 50, nnz_per_cell=10, n_pcs=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata.write_h5ad(source)
    with h5py.File(source, "r+") as f:
        change(f)
    plan = as_stored("ml-minibatch", source)
    if refused is not None:
        assert plan.refused is not None and plan.refused.startswith(refused), plan
        return
    assert plan.refused is None and (unit is None or unit in plan.units), plan
    out, reference = tmp_path / "out.zarr", tmp_path / "reference.zarr"
    assert annlayout.apply("ml-minibatch", source, out).verified
    with monkeypatch.context() as patched:
        through_anndata(patched)
        annlayout.apply("ml-minibatch", source, reference, verify=False)
    assert_same_tree(tree(out), tree(reference), f"{change.__name__}: ")
