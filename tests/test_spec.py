"""Layout files: loading, located errors, extends, writability checks, JSON schema."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from annlayout.layout.spec import (
    ChunkSpec,
    Layout,
    LayoutError,
    ShardSpec,
    json_schema,
    load_layout,
    shipped_layouts,
)

from .conftest import SHIPPED


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def messages(path) -> list[str]:
    with pytest.raises(LayoutError) as info:
        load_layout(path)
    return info.value.messages


def test_shipped_layouts_load_and_describe_themselves():
    assert set(SHIPPED) >= {
        "anndata-default",
        "ml-minibatch",
        "analysis",
        "cell-browser",
        "archive",
        "h5ad-gzip",
    }
    for name in SHIPPED:
        layout = load_layout(name)
        assert layout.name == name
        assert len(layout.description) > 40
        assert layout.source.endswith(f"{name}.yaml")


def test_shipped_layouts_comment_their_numbers():
    for name, path in shipped_layouts().items():
        text = path.read_text()
        assert text.count("#") >= 4, f"{name}: numbers need a comment giving the reason"


def test_three_mistakes_three_located_messages(tmp_path):
    path = write(
        tmp_path,
        "cell-browser.yaml",
        """
        annlayout: 1
        name: cell-browser
        target: {format: zarr, zarr_format: 2}
        defaults:
          codecs: [{name: zstd, levle: 3}]
        rules:
          - match: {path: X}
            chunks: {major: 0}
          - match: {path: obs/*}
            shards: {bytes: 1GiB}
        """,
    )
    assert messages(path) == [
        "cell-browser.yaml:5: defaults.codecs[0].levle: unknown key 'levle'; did you mean 'level'?",
        "cell-browser.yaml:8: rules[0].chunks.major: must be a positive integer",
        "cell-browser.yaml:10: rules[1].shards: shards need zarr_format: 3 (zarr v2 has no sharding)",
    ]


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    path = write(tmp_path, "broken.yaml", "annlayout: 1\nname: [oops\ntarget: x\n")
    (message,) = messages(path)
    assert message.startswith("broken.yaml:3:")
    assert "YAML syntax error" in message


def test_unknown_key_names_closest_valid_one(tmp_path):
    path = write(
        tmp_path,
        "x.yaml",
        """
        annlayout: 1
        name: x
        rules:
          - match: {path: X, encodng: csr_matrix}
            chunk: {rows: 4}
        """,
    )
    assert messages(path) == [
        "x.yaml:4: rules[0].match.encodng: unknown key 'encodng'; did you mean 'encoding'?",
        "x.yaml:5: rules[0].chunk: unknown key 'chunk'; did you mean 'chunks'?",
    ]


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("chunks: {rows: 4, bytes: 1MiB}", "set exactly one of"),
        ("chunks: {bytes: lots}", "rules[0].chunks.bytes"),
        ("codecs: [{name: lzma}]", "unknown codec 'lzma'"),
        ("orientations: [csr, csr]", "must be [csr], [csc]"),
        ("index_dtype: int16", "must be 'keep', 'minimal', 'int32' or 'int64'"),
        ("shards: {bytes: 1GiB, chunks: 4}", "set one of bytes, chunks, shape"),
    ],
)
def test_field_errors(tmp_path, snippet, expected):
    path = write(
        tmp_path,
        "f.yaml",
        f"""
        annlayout: 1
        name: f
        rules:
          - match: {{path: X}}
            {snippet}
        """,
    )
    (message,) = messages(path)
    assert message.startswith("f.yaml:5: rules[0].")
    assert expected in message


def test_a_bad_value_is_reported_once_in_file_order_with_a_hint(tmp_path):
    """encoding takes a name or a list of names: a mistyped name is one problem, not one per
    form; problems come in the order of the file; a mistyped value gets the closest one."""
    path = write(
        tmp_path,
        "order.yaml",
        """
        annlayout: 1
        name: order
        defaults:
          codecs: [{name: zstdd}]
        rules:
          - match: {path: X, encoding: csc_matix}
            index_dtype: minimall
          - match: {path: [X, layers/*], encoding: [csr_matrix, csc_matix]}
            shards: nope
        target: {zarr_fromat: 3}
        """,
    )
    assert messages(path) == [
        "order.yaml:4: defaults.codecs[0]: unknown codec 'zstdd'; did you mean 'zstd'?",
        "order.yaml:6: rules[0].match.encoding: unknown value 'csc_matix'; did you mean "
        "'csc_matrix'?",
        "order.yaml:7: rules[0].index_dtype: must be 'keep', 'minimal', 'int32' or 'int64' "
        "(got 'minimall'); did you mean 'minimal'?",
        "order.yaml:8: rules[1].match.encoding[1]: unknown value 'csc_matix'; did you mean "
        "'csc_matrix'?",
        "order.yaml:9: rules[1].shards: must be none, a mapping (bytes, chunks or shape) or a "
        "list (the shard shape), e.g. {bytes: 64MiB} (got 'nope')",
        "order.yaml:10: target.zarr_fromat: unknown key 'zarr_fromat'; did you mean 'zarr_format'?",
    ]


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("match: {path: 5}", "rules[0].match.path: must be a string or a list (got 5)"),
        ("match: {path: X}\n  shards: {chunks: x}",
         "rules[0].shards.chunks: must be an integer or a list (got 'x')"),
        ("match: {path: X}\n  chunks: [0, -1]", "rules[0].chunks.shape[0]: must be a positive"),
        ("match: {path: X}\n  codecs: zstd", "rules[0].codecs: must be a list such as"),
        ("match: {path: X}\n  chunks: big", "rules[0].chunks: must be a mapping (shape, rows,"),
    ],
)  # fmt: skip
def test_a_value_that_fits_no_form_is_one_problem(tmp_path, snippet, expected):
    path = write(tmp_path, "u.yaml", "annlayout: 1\nname: u\nrules:\n- " + snippet + "\n")
    (message,) = messages(path)
    assert message.split(": ", 1)[1].startswith(expected), message


def test_missing_required_fields_and_bad_version(tmp_path):
    path = write(tmp_path, "v.yaml", "annlayout: 2\ndescription: no name\n")
    found = messages(path)
    assert "v.yaml:1: annlayout: must be 1 (got 2)" in found
    assert "v.yaml:1: name: required field is missing" in found


def test_h5ad_cannot_store_zstd_or_shards(tmp_path):
    path = write(
        tmp_path,
        "h.yaml",
        """
        annlayout: 1
        name: h
        target: {format: h5ad}
        defaults:
          codecs: [{name: zstd, level: 3}]
          shards: {bytes: 1GiB}
        """,
    )
    assert messages(path) == [  # in the order of the file
        "h.yaml:5: defaults.codecs[0].name: h5ad cannot store zstd without HDF5 plugins; use gzip or none",
        "h.yaml:6: defaults.shards: h5ad cannot store shards; use shards: none",
    ]


def test_zarr_v2_holds_one_compressor(tmp_path):
    path = write(
        tmp_path,
        "two.yaml",
        """
        annlayout: 1
        name: two
        target: {zarr_format: 2}
        defaults:
          codecs: [{name: zstd}, {name: gzip}]
        """,
    )
    assert messages(path) == [
        "two.yaml:5: defaults.codecs: zarr v2 stores one compressor per array"
    ]


def test_extends_by_name_and_path_child_rules_first(tmp_path):
    write(
        tmp_path,
        "parent.yaml",
        """
        annlayout: 1
        name: parent
        extends: ml-minibatch
        rules:
          - match: {path: obsm/X_umap}
            chunks: {rows: 10}
        """,
    )
    child = write(
        tmp_path,
        "child.yaml",
        """
        annlayout: 1
        name: child
        extends: parent.yaml
        defaults:
          codecs: [{name: zstd, level: 5}]
        rules:
          - match: {path: X}
            chunks: {major: 8}
        """,
    )
    layout = load_layout(child)
    base = load_layout("ml-minibatch")
    assert layout.target == base.target
    assert layout.rules[0].chunks == ChunkSpec(major=8)
    assert layout.rules[1].match.path == "obsm/X_umap"
    assert layout.rules[2:] == base.rules
    assert layout.defaults.codecs[0].level == 5
    assert layout.defaults.shards == base.defaults.shards  # inherited field by field
    rule, settings = layout.rule_for("X", "csr_matrix")
    assert rule == 0
    assert settings.shards == base.rules[0].shards or settings.shards == base.defaults.shards


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", "annlayout: 1\nname: a\nextends: b.yaml\n")
    write(tmp_path, "b.yaml", "annlayout: 1\nname: b\nextends: a.yaml\n")
    (message,) = messages(tmp_path / "a.yaml")
    assert "cycle a.yaml -> b.yaml -> a.yaml" in message


def test_extends_unknown_parent(tmp_path):
    path = write(tmp_path, "c.yaml", "annlayout: 1\nname: c\nextends: ml-minibatc\n")
    (message,) = messages(path)
    assert message.startswith("c.yaml:3: extends:")
    assert "did you mean 'ml-minibatch'" in message


def test_unknown_parent_is_reported_with_the_files_other_problems(tmp_path):
    """One run names every problem of the file: a misspelt parent was reported only after the
    schema errors were fixed."""
    path = write(tmp_path, "c.yaml", "annlayout: 1\nname: c\nextends: ml-minibatc\nchunkz: 4\n")
    found = messages(path)
    assert found[0].startswith("c.yaml:3: extends: ml-minibatc: no such layout")
    assert found[1].startswith("c.yaml:4: chunkz:")


def test_child_switching_to_v2_conflicts_with_inherited_shards(tmp_path):
    path = write(
        tmp_path,
        "v2.yaml",
        "annlayout: 1\nname: v2\nextends: ml-minibatch\ntarget: {zarr_format: 2}\n",
    )
    found = messages(path)
    assert found and all(
        m.startswith("v2.yaml:4: target: shards need zarr_format: 3") for m in found
    )


def test_unknown_layout_name():
    with pytest.raises(LayoutError, match="did you mean 'archive'"):
        load_layout("archiv")


def test_byte_sizes_as_people_write_them():
    assert ShardSpec.model_validate({"bytes": "1GiB"}).bytes == 1 << 30
    assert ShardSpec.model_validate({"bytes": "256MB"}).bytes == 256_000_000
    assert ChunkSpec.model_validate([1000, -1]).shape == [1000, -1]
    assert not ShardSpec.model_validate("none").enabled


def test_glob_matching():
    layout = Layout.model_validate(
        {
            "annlayout": 1,
            "name": "g",
            "rules": [
                {"match": {"path": "uns/**"}, "chunks": {"rows": 1}},
                {"match": {"path": "obs/*", "encoding": "categorical"}, "chunks": {"rows": 2}},
                {"match": {"encoding": ["csr_matrix", "csc_matrix"]}, "chunks": {"rows": 3}},
            ],
        }
    )
    assert layout.rule_for("uns/a/b/c", "array")[0] == 0
    assert layout.rule_for("obs/cell_type", "categorical")[0] == 1
    assert layout.rule_for("obs/cell_type", "array")[0] is None
    assert layout.rule_for("obs/a/b", "categorical")[0] is None  # * stays within a segment
    assert layout.rule_for("layers/counts", "csc_matrix")[0] == 2


def test_json_schema_covers_every_field():
    schema = json_schema()
    text = str(schema)
    for field in ("annlayout", "extends", "target", "defaults", "rules", "chunks", "shards",
                  "codecs", "index_dtype", "orientations", "major", "elements", "cname"):  # fmt: skip
        assert field in text
    assert schema["title"] == "annlayout layout file"


def schema_problems(data) -> list[str]:
    """What an editor validating against ``annlayout schema`` flags in a layout file."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(json_schema())
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)
    ]


def test_schema_accepts_the_layouts_we_ship_and_write():
    """Every shipped file, every layout as bench writes it (recommended.yaml is Layout.to_yaml
    of a shipped layout or a --search variant), and the shorthand forms loading accepts."""
    import jsonschema
    import yaml

    from annlayout.bench import search_variants

    jsonschema.Draft202012Validator.check_schema(json_schema())
    for name, path in shipped_layouts().items():
        assert schema_problems(yaml.safe_load(path.read_text())) == [], name
        layout = load_layout(name)
        for written in (layout, *search_variants(layout)):
            assert schema_problems(yaml.safe_load(written.to_yaml(header="why"))) == [], name
    shorthand = {
        "annlayout": 1,
        "name": "short",
        "defaults": {"chunks": [1000, -1], "shards": [4000, 100], "codecs": "none"},
        "rules": [{"match": {"path": "X"}, "shards": False, "copy": {"shards": "none"}}],
    }
    assert Layout.model_validate(shorthand)  # what loading accepts ...
    assert schema_problems(shorthand) == []  # ... the schema accepts
    wrong = {"annlayout": 1, "name": "w", "defaults": {"shards": "nope", "codecs": "zstd"}}
    assert len(schema_problems(wrong)) == 2  # and it still rejects what loading rejects


def test_resolved_layout_round_trips_through_yaml(tmp_path):
    layout = load_layout("cell-browser")
    path = tmp_path / "copy.yaml"
    path.write_text(layout.to_yaml(header="copied"))
    again = load_layout(path)
    assert again.canonical() == layout.canonical()
    assert again.sha256() == layout.sha256()


def test_did_you_mean_follows_the_union_member_and_aliases(tmp_path):
    path = write(
        tmp_path,
        "m.yaml",
        """
        annlayout: 1
        name: m
        defaults:
          codecs: [{name: blosc, clevle: 5}]
        rules:
          - match: {path: X}
            cpy: {chunks: {major: 4}}
        """,
    )
    assert messages(path) == [
        "m.yaml:4: defaults.codecs[0].clevle: unknown key 'clevle'; did you mean 'clevel'?",
        "m.yaml:7: rules[0].cpy: unknown key 'cpy'; did you mean 'copy'?",
    ]


def test_union_tags_come_from_the_model_validated():
    from annlayout.bench.workloads import Workload
    from annlayout.layout.yaml_errors import union_tags

    assert union_tags(Layout) == {"zstd", "blosc", "gzip", "none"}
    assert union_tags(Workload) == {
        "random-rows", "row-slices", "gene-queries", "category-genes", "obs-columns", "full-scan",
        "training",
    }  # fmt: skip


def test_unknown_union_member_is_named_by_its_list(tmp_path):
    from annlayout.bench import load_workload

    path = write(tmp_path, "w.yaml", "workload: 1\nname: w\npatterns:\n  - kind: zigzag\n")
    with pytest.raises(LayoutError) as info:
        load_workload(path)
    (message,) = info.value.messages
    assert message.startswith("w.yaml:4: patterns[0]: unknown pattern 'zigzag'; use 'random-rows'")


def test_models_import_no_higher_layer():
    """The layout package imports nothing above it (the callback is composed in write/)."""
    code = (
        "import sys, annlayout.layout.spec; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'annlayout', 'numpy', 'zarr', 'anndata'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    assert set(eval(done.stdout)) == {
        "annlayout", "annlayout.base", "annlayout.base.defaults", "annlayout.base.errors",
        "annlayout.layout", "annlayout.layout.files", "annlayout.layout.models",
        "annlayout.layout.shipped", "annlayout.layout.spec", "annlayout.layout.yaml_errors",
    }  # fmt: skip


def test_listing_agrees_with_loading():
    from annlayout.layout.listing import shipped_listing

    for entry in shipped_listing():
        layout = load_layout(entry.name)
        assert entry.description == layout.description
        fmt, version = layout.target.format, layout.target.zarr_format
        assert entry.target == ("h5ad" if fmt == "h5ad" else f"zarr v{version}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("annlayout: 1\nname: [x\n", "x.yaml:3:1: YAML syntax error"),
        ("annlayout: 2\nname: x\n", "x.yaml:1: annlayout: must be 1 (got 2)"),
        ("annlayout: 1\nname: x\ntarget: {zarr_format: 4}\n", "x.yaml:3: target.zarr_format:"),
        ("annlayout: 1\nname: x\nextends: nope\n", "x.yaml:3: extends: nope: no such layout"),
    ],
)
def test_listing_reports_what_loading_reports(tmp_path, monkeypatch, text, expected):
    import annlayout.layout.listing
    import annlayout.layout.shipped

    (tmp_path / "x.yaml").write_text(text)
    monkeypatch.setattr(annlayout.layout.shipped, "layouts_dir", lambda: tmp_path)
    with pytest.raises(LayoutError) as info:
        annlayout.layout.listing.shipped_listing()
    assert info.value.messages[0].startswith(expected)
