"""YAML files validated into pydantic models, every problem reported with file, line and field.

Used for layout files and workload files. pydantic puts the chosen member of a tagged union into
an error's location (``defaults.codecs[0].zstd.level``); those tags are taken from the model
being validated (:func:`union_tags`), so each file format's messages depend on its own model
only. pydantic itself is imported when a file is validated, not with this module.
"""

from __future__ import annotations

import difflib
import typing
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from annlayout.errors import LayoutError

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError
    from pydantic_core import ErrorDetails


def read_yaml(path: Path, what: str) -> tuple[yaml.Node, dict]:
    """The YAML node tree (for line numbers) and data of a mapping file; located errors."""
    label = path.name
    try:
        text = path.read_text()
    except OSError as err:
        raise LayoutError([f"{label}: cannot read: {err.strerror}"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        raise LayoutError([f"{where}: YAML syntax error: {err.problem or err}"]) from None
    if not isinstance(data, dict):
        raise LayoutError([f"{label}:1: {what}"])
    return node, data


def validate_file(path: Path, model: type[BaseModel], what: str) -> Any:
    """Load a YAML file into ``model``, every problem reported with file, line and field."""
    from pydantic import ValidationError

    node, data = read_yaml(path, what)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise LayoutError(located_messages(err, node, path.name, model)) from None


def located_messages(
    err: ValidationError, node: yaml.Node, label: str, model: type[BaseModel]
) -> list[str]:
    """One ``file:line: field: problem`` line per error of validating ``model``."""
    tags = union_tags(model)
    return [f"{label}:{line_of(node, e['loc'], tags)}: {describe(e, model)}" for e in err.errors()]


@cache
def union_tags(model: type[BaseModel]) -> frozenset[str]:
    """Discriminator values of the tagged unions in ``model`` (codec names, pattern kinds).

    Read from pydantic's core schema, whose tagged unions are keyed by exactly the tags that
    pydantic puts into error locations.
    """
    tags: set[str] = set()
    stack: list[Any] = [model.__pydantic_core_schema__]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") == "tagged-union":
                tags.update(str(tag) for tag in item["choices"])
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return frozenset(tags)


def _is_tag(part: Any, tags: frozenset[str]) -> bool:
    # pydantic adds the chosen union member to loc: a tag such as 'zstd', or a label such as
    # 'list[...]' or 'function-after[...]'
    return isinstance(part, str) and (part in tags or "[" in part or part.startswith("function-"))


def line_of(node: yaml.Node | None, loc: tuple, tags: frozenset[str] = frozenset()) -> int:
    """Line of the deepest YAML node along ``loc`` (1-based); ``tags`` are skipped."""
    best = node.start_mark.line if node is not None else 0
    for part in (p for p in loc if not _is_tag(p, tags)):
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if key.value == part:
                    best, node = key.start_mark.line, value
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            best = node.start_mark.line
        else:
            continue  # pydantic's own loc parts (validators) have no node
    return best + 1


def loc_text(loc: tuple) -> str:
    """``rules[0].chunks.major`` for ``('rules', 0, 'chunks', 'major')``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def describe(error: ErrorDetails, model: type[BaseModel]) -> str:
    """One pydantic error as ``field: problem``, in the words of a layout file's author."""
    tags = union_tags(model)
    loc = tuple(p for p in error["loc"] if not _is_tag(p, tags))
    where = loc_text(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        key = loc[-1] if loc else "?"
        names = _field_names(error["loc"][:-1], model)
        hint = difflib.get_close_matches(str(key), names, n=1)
        return f"{where}: unknown key {key!r}" + (
            f"; did you mean {hint[0]!r}?" if hint else f"; valid keys: {', '.join(names)}"
        )
    if kind == "missing":
        return f"{where}: required field is missing"
    if kind == "greater_than" and error.get("ctx", {}).get("gt") == 0:
        return f"{where}: must be a positive integer"
    if kind == "literal_error":
        return f"{where}: must be {error['ctx']['expected']} (got {error['input']!r})"
    if kind == "union_tag_invalid":  # e.g. codecs[0]: unknown codec 'lzma'
        owner = next((p for p in reversed(loc) if isinstance(p, str)), "value")
        tag, expected = error["ctx"]["tag"], error["ctx"]["expected_tags"]
        return f"{where}: unknown {owner.removesuffix('s')} {tag!r}; use {expected}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message[0].lower()}{message[1:]}" if message else where


def _field_names(loc: tuple, model: type[BaseModel]) -> list[str]:
    """Valid keys at ``loc`` (a pydantic error location, union tags included) in ``model``."""
    models: list[Any] = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((_keys(m)[part] for m in models if part in _keys(m)), None)
        if field is not None:
            models = _models_in(field.annotation)
            if not models:
                return []
            continue
        # a union tag picks the member whose discriminator is that value
        tagged = [m for m in models if _has_literal(m, part)]
        if tagged:
            models = tagged
        elif not _is_tag(part, frozenset()):
            break
    return list(_keys(models[0]))


def _keys(model: Any) -> dict[str, Any]:
    """A model's fields by the key a file uses (the alias where there is one: ``copy``)."""
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _models_in(annotation: Any) -> list[Any]:
    """The pydantic models an annotation names (``list[Zstd | Blosc] | None`` -> both)."""
    if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _has_literal(model: Any, value: str) -> bool:
    return any(
        typing.get_origin(field.annotation) is typing.Literal
        and value in typing.get_args(field.annotation)
        for field in model.model_fields.values()
    )


__all__ = ["located_messages", "read_yaml", "union_tags", "validate_file"]
