"""Layout files: loading by shipped name or path, ``extends``, checks against the target.

Every problem is reported at once, each with its file, line and field
(:class:`~annlayout.base.errors.LayoutError`); the located messages come from
:mod:`annlayout.layout.yaml_errors`, the models from :mod:`annlayout.layout.models`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from annlayout.base.errors import LayoutError
from annlayout.layout.models import ElementSettings, Layout, Target
from annlayout.layout.shipped import layouts_dir, shipped_layouts
from annlayout.layout.yaml_errors import by_line, line_of, loc_text, located, read_yaml


def _locate(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    text = str(name_or_path)
    shipped = shipped_layouts()
    if text in shipped and not Path(text).suffix:
        return shipped[text]
    path = Path(text).expanduser()
    if not path.is_absolute() and relative_to is not None:
        path = relative_to / path
    if path.is_file():
        return path
    hint = difflib.get_close_matches(text, list(shipped), n=1)
    extra = f"; did you mean {hint[0]!r}?" if hint else f" (shipped: {', '.join(shipped)})"
    raise LayoutError([f"{text}: no such layout file or shipped layout{extra}"])


def load_layout(name_or_path: str | Path | Layout) -> Layout:
    """Load a layout by shipped name (``ml-minibatch``) or path, with ``extends`` applied.

    Raises :class:`LayoutError` listing every problem, each with file, line and field path.
    """
    if isinstance(name_or_path, Layout):
        return name_or_path
    return _load(_locate(name_or_path), chain=())


def _extends_problems(extends: Any, path: Path, node: Any) -> list[tuple[int, str]]:
    """The ``extends:`` value's problem as a ``(line, text)`` pair, if it names no layout."""
    if not isinstance(extends, str):
        return []  # a wrong type is the schema's problem, reported with the others
    try:
        _locate(extends, relative_to=path.parent)
    except LayoutError as err:
        return [(line_of(node, ("extends",)), f"extends: {err.messages[0]}")]
    return []


def _load(path: Path, chain: tuple[Path, ...]) -> Layout:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise LayoutError([f"{chain[-1].name}: extends: cycle {cycle}"])
    label = path.name
    node, data = read_yaml(path, "a layout file is a mapping (annlayout: 1, name: ...)")

    try:
        own = Layout.model_validate(data)
    except ValidationError as err:
        problems = located(err, node, data, Layout)
        raw_target = data.get("target")
        target = raw_target if isinstance(raw_target, dict) else {}
        problems += [
            (line_of(node, loc), f"{loc_text(loc)}: {message}")
            for loc, message in _unwritable(target, data)
        ]
        # a misspelt parent is one more problem of this file, not one for the next run
        problems += _extends_problems(data.get("extends"), path, node)
        raise LayoutError(by_line(label, problems)) from None
    shipped = path.resolve().parent == layouts_dir().resolve()
    for index, rule in enumerate(own.rules):
        rule._origin = f"{label}:{line_of(node, ('rules', index))}"
        rule._shipped = shipped

    layout = own
    if own.extends:
        if problem := _extends_problems(own.extends, path, node):
            raise LayoutError(by_line(label, problem))
        parent_path = _locate(own.extends, relative_to=path.parent)
        layout = _merge(_load(parent_path, (*chain, path)), own)
    layout._source = str(path)

    target = layout.target.model_dump()
    problems = [
        (line_of(node, loc), f"{loc_text(loc)}: {message}")
        for loc, message in _unwritable(target, data)
    ]
    # What this file inherits must fit the target too (a child may switch zarr v3 to v2).
    parent_rules = layout.rules[len(own.rules) :]
    own_default_fields = own.defaults.model_fields_set
    inherited = {
        "defaults": layout.defaults.model_dump(mode="json", exclude=own_default_fields),
        "rules": [rule.model_dump(mode="json") for rule in parent_rules],
    }
    for loc, message in _unwritable(target, inherited):
        where = parent_rules[loc[1]].origin if loc[0] == "rules" else f"{layout.extends} defaults"
        problems.append((line_of(node, ("target",)), f"target: {message} ({where})"))
    if problems:
        raise LayoutError(by_line(label, problems))
    return layout


def _unwritable(target: dict, data: dict) -> list[tuple[tuple, str]]:
    """Settings in raw layout data that ``target`` cannot store, as (field path, message)."""
    fmt, zarr_format = target.get("format", "zarr"), target.get("zarr_format", 3)
    places: list[tuple[tuple, Any]] = [(("defaults",), data.get("defaults"))]
    rules = data.get("rules")
    places += [(("rules", i), r) for i, r in enumerate(rules if isinstance(rules, list) else [])]
    places += [
        ((*loc, "copy"), settings["copy"])
        for loc, settings in list(places)
        if isinstance(settings, dict) and isinstance(settings.get("copy"), dict)
    ]
    problems: list[tuple[tuple, str]] = []
    for loc, settings in places:
        if not isinstance(settings, dict):
            continue
        shards = settings.get("shards")
        if shards not in (None, "none", False, {}):
            if fmt == "h5ad":
                problems.append(((*loc, "shards"), "h5ad cannot store shards; use shards: none"))
            elif zarr_format == 2:
                problems.append(
                    ((*loc, "shards"), "shards need zarr_format: 3 (zarr v2 has no sharding)")
                )
        codecs = settings.get("codecs")
        codecs = codecs if isinstance(codecs, list) else []
        compressors = [c for c in codecs if not (isinstance(c, dict) and c.get("name") == "none")]
        if (fmt == "h5ad" or zarr_format == 2) and len(compressors) > 1:
            store = "h5ad" if fmt == "h5ad" else "zarr v2"
            problems.append(((*loc, "codecs"), f"{store} stores one compressor per array"))
        for j, codec in enumerate(codecs):
            name = codec.get("name") if isinstance(codec, dict) else None
            if fmt == "h5ad" and name not in (None, "gzip", "none"):
                problems.append(
                    (
                        (*loc, "codecs", j, "name"),
                        f"h5ad cannot store {name} without HDF5 plugins; use gzip or none",
                    )
                )
    return problems


def _merge(parent: Layout, child: Layout) -> Layout:
    """Child fields replace parent fields; child rules come first (first match wins)."""

    def overlay(base: BaseModel, top: BaseModel) -> dict[str, Any]:
        return {**dict(base), **{k: getattr(top, k) for k in top.model_fields_set}}

    merged = Layout.model_construct(
        annlayout=child.annlayout,
        name=child.name,
        description=child.description or parent.description,
        extends=child.extends,
        target=Target.model_construct(**overlay(parent.target, child.target)),
        defaults=ElementSettings.model_construct(**overlay(parent.defaults, child.defaults)),
        rules=[*child.rules, *parent.rules],
    )
    merged._source = child._source
    return merged


def json_schema() -> dict[str, Any]:
    """JSON Schema of the layout file format, for editors and validators."""
    schema = Layout.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "annlayout layout file"
    return schema


__all__ = ["json_schema", "load_layout"]
