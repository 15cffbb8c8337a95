"""The encoding registry (format/registry.py) against what anndata writes, and its tables."""

from __future__ import annotations

import typing
from pathlib import Path

import h5py
import pytest
import zarr

from annlayout.apply import verbatim
from annlayout.base.errors import AnnlayoutError, UnknownEncodingError
from annlayout.format import registry
from annlayout.format.encodings import attr, encoding_of, is_group
from annlayout.format.registry import Dispatch, Encoding, lookup, names, registered
from annlayout.layout.models import EncodingType
from annlayout.planning import survey
from annlayout.verify import compare

#: the modules whose behaviour dispatches by encoding: importing them filled their tables
DISPATCHING = (survey, verbatim, compare)

CORPUS = Path(__file__).parent / "corpus" / "data"


def _encodings_in(node, path: str = ""):
    """(path, encoding, version) of every node of a store that has an encoding."""
    encoding = attr(node, "encoding-type")
    if encoding is not None:
        yield path or "/", encoding, attr(node, "encoding-version")
    if is_group(node):
        for key in node:
            yield from _encodings_in(node[key], f"{path}/{key}")


def _open(path: Path):
    return h5py.File(path, "r") if path.suffix == ".h5ad" else zarr.open_group(path, mode="r")


def test_every_encoding_in_the_corpus_is_registered():
    found: dict[tuple[str, str | None], str] = {}
    for path in sorted(CORPUS.iterdir()):
        root = _open(path)
        try:
            for where, encoding, version in _encodings_in(root):
                found.setdefault((encoding, version), f"{path.name}:{where}")
        finally:
            if isinstance(root, h5py.File):
                root.close()
    assert len(found) > 10  # the corpus was walked
    unknown = {}
    for (name, version), where in found.items():
        encoding = registry.get(name)
        if encoding is None or version not in encoding.versions:
            unknown[(name, version)] = where
    assert not unknown, f"unregistered (encoding, version): {unknown}"


def test_what_this_anndata_writes_is_registered_in_its_version():
    from anndata._io.specs.registry import _REGISTRY

    writes = {(s.encoding_type, s.encoding_version) for s in _REGISTRY.write_specs.values()}
    assert writes == {(e.name, e.version) for e in registered()}


def test_the_layout_files_vocabulary_is_the_registry():
    """layout/ sits below format/ and keeps its own list (match: encoding: in a layout file)."""
    assert set(typing.get_args(EncodingType)) == {e.name for e in registered()}


def test_legacy_sparse_groups_map_to_registered_encodings():
    with h5py.File(CORPUS / "anndata-0.6.22.h5ad", "r") as f:
        sparse = [f[k] for k in ("X", "raw.X") if k in f and is_group(f[k])]
        assert sparse
        for node in sparse:
            assert lookup(encoding_of(node), node.name).sparse


def test_unknown_encoding_is_one_line_naming_element_and_encoding():
    with pytest.raises(UnknownEncodingError) as caught:
        lookup("future-thing", "uns/weird")
    assert isinstance(caught.value, AnnlayoutError)
    assert str(caught.value) == "uns/weird: unknown encoding 'future-thing'"
    with pytest.raises(UnknownEncodingError, match=r"^X: unknown encoding None$"):
        lookup(None, "X")


def test_a_table_names_an_encoding_it_has_no_entry_for(tmp_path):
    group = zarr.open_group(tmp_path / "a.zarr", mode="w")
    column = group.create_group("cell_type")
    column.attrs.update({"encoding-type": "categorical", "encoding-version": "0.2.0"})
    with pytest.raises(UnknownEncodingError) as caught:
        compare.stored_row_digests(column, 1 << 20)
    assert str(caught.value) == "cell_type: no row digests for encoding 'categorical'"
    column.attrs["encoding-type"] = "future-thing"
    with pytest.raises(UnknownEncodingError, match=r"^cell_type: unknown encoding 'future-thing'$"):
        compare.stored_row_digests(column, 1 << 20)


def test_dispatch_tables_cover_exactly_the_encodings_they_claim():
    assert all(module.__name__ for module in DISPATCHING)
    tables = {table.behaviour: table for table in Dispatch.tables}
    # survey, verbatim (checks and copies), verify: each module's tables were made
    assert {
        "description",
        "parts",
        "check for copying as stored",
        "copy as stored",
        "row digests",
    } <= set(tables)
    for table in Dispatch.tables:
        assert table.missing() == frozenset(), table.behaviour
        assert table.encodings <= names(table.covers), table.behaviour


def test_copied_as_stored_means_checked_and_copied():
    assert verbatim._CHECKS.encodings == verbatim._COPIES.encodings
    assert "awkward-array" not in verbatim._COPIES.encodings  # anndata's round trip changes it


def test_one_registration_per_encoding():
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(Encoding("array", "0.2.0"))
    table: Dispatch[int] = Dispatch("test", covers=lambda e: False)
    Dispatch.tables.remove(table)  # not one the coverage test should see
    with pytest.raises(ValueError, match="unregistered or given twice"):
        table.register("future-thing")(1)
    table.register("array")(1)
    with pytest.raises(ValueError, match="unregistered or given twice"):
        table.register("array")(2)


def test_what_each_encoding_is():
    csr, csc = lookup("csr_matrix", "X"), lookup("csc_matrix", "X")
    assert csr.parts == csc.parts == ("data", "indices", "indptr")
    assert (csr.oriented("X"), csr.transposed, csc.transposed) == ("csr", csc, csr)
    assert csr.by_rows and not csc.by_rows and lookup("array", "X").by_rows
    assert names(lambda e: e.container) == {"anndata", "raw", "dict", "dataframe"}
    assert names(lambda e: e.matrix) == {"array", "csr_matrix", "csc_matrix"}
    assert names(lambda e: e.holds_whole) == {
        "dataframe", "categorical", "nullable-integer", "nullable-boolean",
        "nullable-string-array", "awkward-array",
    }  # fmt: skip
    assert lookup("dataframe", "obs").versions == ("0.2.0", "0.1.0")
    assert names(lambda e: e.empty) == {"null"} and names(lambda e: e.root) == {"anndata"}
    assert lookup("nullable-string-array", "obs/x").string_parts == ("values",)
    with pytest.raises(UnknownEncodingError, match=r"^obs: no orientation for encoding"):
        lookup("dataframe", "obs").oriented("obs")
