"""Small elements copied as stored (annlayout.rewrite.verbatim) against anndata's own writer.

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
from annlayout.datagen import make_dataset
from annlayout.rewrite import stream
from annlayout.rewrite.verbatim import CopyPlan, plan_copy
from annlayout.stores import open_store

from .test_corpus import CORPUS, READABLE, assert_same, read_any

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


def copy_plan(layout: str, source: Path) -> CopyPlan:
    root = open_store(source)
    try:
        return plan_copy(root, plans_of(layout, source))
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
    monkeypatch.setattr(stream, "plan_copy", lambda root, plans: CopyPlan("asked for by the test"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_copied_as_stored_equals_anndatas_write(tmp_path, monkeypatch, layout):
    """Each corpus file with one of the layouts, in turn (every pair would take minutes)."""
    copied = 0
    for entry in READABLE[LAYOUTS.index(layout) :: len(LAYOUTS)]:
        source = CORPUS / entry["path"]
        if copy_plan(layout, source).refused is not None:
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
    assert copy_plan("ml-minibatch", source) == CopyPlan()  # all of it copied as stored
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
        ("anndata-0.11.4.zarr", None, ("obs", "obs/")),  # nested categories (pandas 3: str)
    ],
)
def test_what_is_not_copied_as_stored_says_why(name, refused, unit):
    source = CORPUS / "data" / name
    if not any(entry["path"].endswith(name) for entry in READABLE):
        pytest.skip(f"{name} is not read by this stack")
    copy = copy_plan("ml-minibatch", source)
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
    assert "annlayout output" in (copy_plan("cell-browser", first).refused or "")
    second = tmp_path / "second.zarr"
    assert annlayout.apply("cell-browser", first, second).verified
