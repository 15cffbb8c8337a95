"""YAML files validated into pydantic models, every problem reported with file, line and field.

Used for layout files and workload files. pydantic puts the chosen member of a tagged union into
an error's location (``defaults.codecs[0].zstd.level``); those tags are taken from the model
being validated (:func:`union_tags`), so each file format's messages depend on its own model
only. pydantic itself is imported when a file is validated, not with this module.
"""

from __future__ import annotations

import difflib
import re
import typing
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from annlayout.base.errors import LayoutError

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
        raise LayoutError(by_line(path.name, located(err, node, data, model))) from None


def located(
    err: ValidationError, node: yaml.Node, data: Any, model: type[BaseModel]
) -> list[tuple[int, str]]:
    """(line, ``field: problem``) per problem found validating ``data`` (read from ``node``)
    into ``model``; a value that fits no member of a union is one problem, not one per member."""
    tags = union_tags(model)
    return [
        (line_of(node, e["loc"], tags), describe(e, model))
        for e in one_per_union(err.errors(), data, tags)
    ]


def by_line(label: str, problems: list[tuple[int, str]]) -> list[str]:
    """``file:line: problem`` lines in the order of the file (stable within a line)."""
    return [f"{label}:{line}: {text}" for line, text in sorted(problems, key=lambda p: p[0])]


# Errors that say only "the value is not of this member's kind" (a string where a list is
# wanted): where a union's other member got further, they are noise.
_KIND_MISMATCH = frozenset({
    "string_type", "list_type", "int_type", "int_parsing", "float_type", "float_parsing",
    "bool_type", "bool_parsing", "dict_type", "model_type", "model_attributes_type",
})  # fmt: skip


def one_per_union(errors: list[ErrorDetails], data: Any, tags: frozenset[str]) -> list[Any]:
    """pydantic reports a value that fits no member of a plain union once per member
    (``encoding: csc_matix`` fails both ``Literal[...]`` and ``list[Literal[...]]``). Keep the
    member the value came closest to: the one whose errors reach deepest into it, then one
    that is more than a kind mismatch, then the first declared; where every member only
    mismatches in kind, one error says all the kinds it may be."""
    candidates = [_member_names(e["loc"], data, tags) for e in errors]
    siblings: dict[tuple, set[int | str]] = {}
    for error, places in zip(errors, candidates, strict=True):
        for place in places:
            siblings.setdefault(error["loc"][:place], set()).add(error["loc"][place])
    groups: dict[tuple, dict[str, list[ErrorDetails]]] = {}
    out: list[Any] = []
    for error, places in zip(errors, candidates, strict=True):
        # a union names two or more members at one place; one name alone is a validator's
        # reshaping (chunks: [0, -1] validated as chunks.shape)
        at = next((a for a in places if len(siblings[error["loc"][:a]]) > 1), None)
        if at is None:
            out.append(error)
            continue
        members = groups.setdefault(error["loc"][:at], {})
        if not members:
            out.append(error["loc"][:at])  # the group's place among the errors
        members.setdefault(str(error["loc"][at]), []).append(error)
    result: list[Any] = []
    for item in out:
        result += _closest_member(item, groups[item]) if isinstance(item, tuple) else [item]
    return result


def _member_names(loc: tuple, data: Any, tags: frozenset[str]) -> list[int]:
    """Where in ``loc`` pydantic may name a plain union's member: string parts where the value
    reached is not a mapping (so they cannot be its keys)."""
    places, value = [], data
    for index, part in enumerate(loc):
        if isinstance(part, int):
            if not isinstance(value, list) or part >= len(value):
                break
            value = value[part]
        elif not isinstance(value, dict):
            places.append(index)
        elif part in value:
            value = value[part]
        elif not _is_tag(part, tags):
            break  # a missing or unknown key: a problem of the mapping itself
    return places


def _mismatch(error: ErrorDetails) -> bool:
    if error["type"] == "literal_error":  # 5 against string literals, 'x' against -1
        values = _literal_values(error["ctx"]["expected"])
        return not any(type(v) is type(error["input"]) for v in values)
    return error["type"] in _KIND_MISMATCH


def _closest_member(prefix: tuple, members: dict[str, list[ErrorDetails]]) -> list[Any]:
    def rank(item: tuple[int, list[ErrorDetails]]) -> tuple[int, bool, int]:
        order, errors = item
        depth = max(len(e["loc"]) for e in errors)
        return (-depth, all(_mismatch(e) for e in errors), order)

    ranked = sorted(enumerate(members.values()), key=rank)
    # the member's name leaves the location: rules[0].chunks.shape[0], not ...[0].constrained-int
    best = [{**e, "loc": (*prefix, *e["loc"][len(prefix) + 1 :])} for e in ranked[0][1]]
    if len(ranked) > 1 and all(
        len(e["loc"]) == len(prefix) + 1 and _mismatch(e) for _, errs in ranked for e in errs
    ):
        kinds = [_kind_wanted(errs[0]) for _, errs in sorted(ranked, key=lambda m: m[0])]
        value = best[0]["input"]
        message = f"must be {' or '.join(kinds)} (got {value!r})"  # described as it stands
        return [{**best[0], "loc": prefix, "type": "union_kind", "msg": message}]
    return best


def _kind_wanted(error: ErrorDetails) -> str:
    """'a valid integer' for pydantic's 'Input should be a valid integer, unable to ...'."""
    if error["type"] == "literal_error":
        return error["ctx"]["expected"]
    text = error["msg"].removeprefix("Input should be ").split(",")[0].replace("a valid ", "a ")
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _literal_values(expected: str) -> list[Any]:
    """The values in pydantic's ``expected`` text: ``'csr' or 'csc'``, ``2 or 3``."""
    values: list[Any] = []
    for quoted, number in re.findall(r"'([^']*)'|(-?\d+)", expected):
        values.append(quoted if not number else int(number))
    return values


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
        wanted, value = error["ctx"]["expected"], error["input"]
        close = _did_you_mean(value, wanted)
        if close and len(_literal_values(wanted)) > _LISTED:  # the hint, not 17 encodings
            return f"{where}: unknown value {value!r}{close}"
        return f"{where}: must be {wanted} (got {value!r}){close}"
    if kind == "union_tag_invalid":  # e.g. codecs[0]: unknown codec 'lzma'
        owner = next((p for p in reversed(loc) if isinstance(p, str)), "value")
        tag, expected = error["ctx"]["tag"], error["ctx"]["expected_tags"]
        unknown = f"{where}: unknown {owner.removesuffix('s')} {tag!r}"
        return unknown + (_did_you_mean(tag, expected) or f"; use {expected}")
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message[0].lower()}{message[1:]}" if message else where


#: A mistyped value of a longer enumeration gets the closest value alone, not the whole list.
_LISTED = 8


def _did_you_mean(value: Any, expected: str) -> str:
    """``; did you mean 'csc_matrix'?`` for a mistyped value of an enumeration, else ''."""
    if not isinstance(value, str):
        return ""
    names = [v for v in _literal_values(expected) if isinstance(v, str)]
    hint = difflib.get_close_matches(value, names, n=1)
    return f"; did you mean {hint[0]!r}?" if hint else ""


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


__all__ = ["by_line", "located", "read_yaml", "union_tags", "validate_file"]
