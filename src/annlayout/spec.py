"""Layout files: pydantic models, YAML loading with located errors, JSON schema.

A layout says, per element of an AnnData store, how it is stored. Everything here is pure
except :func:`load_layout`, which reads the file (and the files it extends).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from annlayout.errors import LayoutError

SPEC_VERSION = 1

#: Every encoding type anndata writes (``iospec.encoding_type``).
EncodingType = Literal[
    "anndata",
    "raw",
    "dict",
    "dataframe",
    "array",
    "string-array",
    "csr_matrix",
    "csc_matrix",
    "categorical",
    "nullable-integer",
    "nullable-boolean",
    "nullable-string-array",
    "awkward-array",
    "numeric-scalar",
    "string",
    "rec-array",
    "null",
]
SPARSE_ENCODINGS = frozenset({"csr_matrix", "csc_matrix"})
IndexDtype = Literal["keep", "minimal", "int32", "int64"]
Orientation = Literal["csr", "csc"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- codecs


class Zstd(_Model):
    """Zstandard: the best ratio for the speed; zarr only (h5py cannot store it without plugins)."""

    name: Literal["zstd"] = Field(description="zstd")
    level: int = Field(
        3, ge=-7, le=22, description="Compression level; 0 means zstd's default (3)."
    )
    checksum: bool = Field(False, description="Store a checksum with every chunk (zarr v3).")


class Blosc(_Model):
    """Blosc meta-compressor: very fast decompression with byte shuffling; zarr only."""

    name: Literal["blosc"] = Field(description="blosc")
    cname: Literal["lz4", "lz4hc", "zstd", "zlib", "blosclz"] = Field(
        "lz4", description="Inner compressor: lz4 decompresses fastest, zstd compresses best."
    )
    clevel: int = Field(5, ge=0, le=9, description="Compression level, 0 (none) to 9.")
    shuffle: Literal["noshuffle", "shuffle", "bitshuffle"] = Field(
        "shuffle",
        description="Byte or bit transposition before compressing; helps numbers whose high "
        "bytes repeat (counts, small indices).",
    )


class Gzip(_Model):
    """Deflate: slow but readable everywhere; the only compressor every h5ad reader has."""

    name: Literal["gzip"] = Field(description="gzip")
    level: int = Field(4, ge=0, le=9, description="Compression level, 0 (none) to 9.")


class NoCodec(_Model):
    """No compression."""

    name: Literal["none"] = Field(description="none")


Codec = Annotated[Zstd | Blosc | Gzip | NoCodec, Field(discriminator="name")]

# --------------------------------------------------------------------------- sizes


class ChunkSpec(_Model):
    """How big one chunk is; exactly one field is set.

    A bare list (``chunks: [1000, -1]``) is an explicit shape.
    """

    shape: list[PositiveInt | Literal[-1] | None] | None = Field(
        None, description="Explicit chunk shape; -1 or null means the whole axis."
    )
    rows: PositiveInt | None = Field(
        None, description="Dense: N rows along axis 0, other axes whole. Sparse: same as major."
    )
    major: PositiveInt | None = Field(
        None,
        description="Sparse: N major-axis slices (rows of CSR, columns of CSC) worth of "
        "nonzeros per chunk of data/indices. Dense: same as rows.",
    )
    elements: PositiveInt | None = Field(None, description="N elements per chunk.")
    bytes: ByteSize | None = Field(
        None, description="Target uncompressed bytes per chunk, e.g. 1MiB."
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_list_is_shape(cls, value: Any) -> Any:
        return {"shape": value} if isinstance(value, list) else value

    @model_validator(mode="after")
    def _exactly_one(self) -> ChunkSpec:
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of shape, rows, major, elements, bytes"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.bytes is not None and self.bytes <= 0:
            raise ValueError("bytes must be positive")
        return self

    @model_serializer
    def _compact(self) -> Any:
        key = next(k for k in type(self).model_fields if getattr(self, k) is not None)
        value = getattr(self, key)
        return value if key == "shape" else {key: int(value)}


class ShardSpec(_Model):
    """How many chunks one zarr v3 shard (one stored object) holds; ``none`` disables sharding."""

    bytes: ByteSize | None = Field(
        None, description="Target uncompressed bytes per shard, e.g. 1GiB."
    )
    chunks: PositiveInt | list[PositiveInt] | None = Field(
        None, description="Chunks per shard: along axis 0 (an integer) or per axis (a list)."
    )
    shape: list[PositiveInt] | None = Field(
        None, description="Explicit shard shape (rounded up to a multiple of the chunks)."
    )

    @model_validator(mode="before")
    @classmethod
    def _none_and_lists(cls, value: Any) -> Any:
        if value is None or value is False or (isinstance(value, str) and value == "none"):
            return {}
        return {"shape": value} if isinstance(value, list) else value

    @model_validator(mode="after")
    def _at_most_one(self) -> ShardSpec:
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"set one of bytes, chunks, shape (got {', '.join(given)})")
        return self

    @property
    def enabled(self) -> bool:
        return any(getattr(self, k) is not None for k in type(self).model_fields)

    @model_serializer
    def _compact(self) -> Any:
        for key in type(self).model_fields:
            value = getattr(self, key)
            if value is not None:
                return value if key == "shape" else {key: value}
        return "none"


# --------------------------------------------------------------------------- rules


class CopySettings(_Model):
    """Storage of a sparse matrix's second orientation; what is left out follows the primary."""

    chunks: ChunkSpec | None = Field(None, description="Chunks of the copy's arrays.")
    shards: ShardSpec | None = Field(None, description="Shards of the copy's arrays.")
    codecs: list[Codec] | None = Field(None, description="Compressors of the copy's arrays.")

    @field_validator("codecs", mode="before")
    @classmethod
    def _codecs_none(cls, value: Any) -> Any:
        return [] if value == "none" else value


class ElementSettings(_Model):
    """Storage settings for an element; a field left out falls back to ``defaults``."""

    chunks: ChunkSpec | None = Field(
        None,
        description="Chunk size: one of shape, rows, major (sparse), elements or bytes; the "
        "unit every read fetches and decodes whole.",
    )
    shards: ShardSpec | None = Field(
        None, description="zarr v3 shards: bytes, chunks per shard, explicit shape, or none."
    )
    codecs: list[Codec] | None = Field(
        None, description="Compressors applied to every chunk, in order; [] or none for raw."
    )
    index_dtype: IndexDtype | None = Field(
        None,
        description="Sparse indices and indptr: keep the input's, minimal (smallest that fits), "
        "int32 or int64.",
    )
    orientations: list[Orientation] | None = Field(
        None,
        description="Sparse: [csr], [csc] or [csr, csc]; the first is the primary that anndata "
        "reads, the second an extra copy in the other orientation.",
    )
    # "copy" in layout files; the attribute is copy_ as BaseModel has a copy() method
    copy_: CopySettings | None = Field(
        None,
        alias="copy",
        description="Sparse, with two orientations: chunks, shards and codecs of the second "
        "copy (major counts its own major axis, e.g. genes for a CSC copy).",
    )

    @field_validator("codecs", mode="before")
    @classmethod
    def _codecs_none(cls, value: Any) -> Any:
        return [] if value == "none" else value

    @field_validator("orientations")
    @classmethod
    def _orientations_unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError("must be [csr], [csc], [csr, csc] or [csc, csr]")
        return value


class Match(_Model):
    """Which elements a rule applies to; both given means both must match."""

    path: str | list[str] | None = Field(
        None,
        description="Element path glob(s): X, layers/*, obsm/X_pca, obs/*, uns/**. "
        "* matches within one path segment, ** across segments.",
    )
    encoding: EncodingType | list[EncodingType] | None = Field(
        None, description="anndata encoding type(s): csr_matrix, array, categorical, ..."
    )

    @model_validator(mode="after")
    def _something(self) -> Match:
        if self.path is None and self.encoding is None:
            raise ValueError("give a path glob, an encoding, or both")
        return self

    @property
    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path or [])

    @property
    def encodings(self) -> list[str]:
        return [self.encoding] if isinstance(self.encoding, str) else list(self.encoding or [])

    def matches(self, path: str, encoding: str) -> bool:
        if self.path is not None and not any(_glob(p).fullmatch(path) for p in self.paths):
            return False
        return self.encoding is None or encoding in self.encodings


class Rule(ElementSettings):
    """Settings for the elements a rule matches; the first matching rule wins."""

    match: Match = Field(description="Which elements (path globs and/or encodings).")
    _origin: str = PrivateAttr("")  # "file:line" of the rule, for messages

    @property
    def origin(self) -> str:
        return self._origin


class Target(_Model):
    """The kind of store a layout writes."""

    format: Literal["zarr", "h5ad"] = Field("zarr", description="zarr directory or h5ad file.")
    zarr_format: Literal[2, 3] = Field(
        3, description="zarr format version; shards need 3, anndata < 0.11 readers need 2."
    )
    consolidate_metadata: bool = Field(
        True, description="zarr: write consolidated metadata so opening costs one request."
    )


class Layout(_Model):
    """A layout file."""

    annlayout: Literal[1] = Field(description="Layout file format version.")
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Layout name: letters, digits, _ . - (recorded in the store's provenance).",
    )
    description: str = Field("", description="Who the layout is for, in a sentence or two.")
    extends: str | None = Field(
        None, description="A shipped layout name or a path (relative to this file)."
    )
    target: Target = Field(Target(), description="The kind of store written.")
    defaults: ElementSettings = Field(
        ElementSettings(), description="Settings for every element no rule sets."
    )
    rules: list[Rule] = Field([], description="Per-element settings; the first match wins.")

    _source: str = PrivateAttr("")

    @property
    def source(self) -> str:
        """The file this layout was loaded from (empty for layouts built in code)."""
        return self._source

    # -- resolution (pure) ------------------------------------------------------------

    def rule_for(self, path: str, encoding: str) -> tuple[int | None, ResolvedSettings]:
        """The first rule matching an element, and its settings with defaults filled in."""
        for index, rule in enumerate(self.rules):
            if rule.match.matches(path, encoding):
                return index, resolve_settings(rule, self.defaults)
        return None, resolve_settings(None, self.defaults)

    def canonical(self) -> dict[str, Any]:
        """The resolved layout (extends applied) as plain data; what provenance records."""
        data = self.model_dump(mode="json", exclude_none=True, by_alias=True)
        data.pop("extends", None)
        return data

    def sha256(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_yaml(self, header: str = "") -> str:
        body = yaml.safe_dump(self.canonical(), sort_keys=False, default_flow_style=None)
        comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
        return comment + body

    def callback(self):
        """A callback for :func:`anndata.experimental.write_dispatched` that applies this layout.

        Returns a :class:`annlayout.callback.LayoutCallback`; its ``plans`` attribute holds
        the plan of every element it wrote.
        """
        from annlayout.callback import make_callback

        return make_callback(self)


@dataclass(frozen=True)
class ResolvedSettings:
    """Settings with every field concrete: what the planner and the callback work from."""

    chunks: ChunkSpec
    shards: ShardSpec
    codecs: tuple[Zstd | Blosc | Gzip | NoCodec, ...]
    index_dtype: str
    orientations: tuple[str, ...] | None  # None: keep the input's orientation
    copy: CopySettings | None = None

    def for_copy(self) -> ResolvedSettings:
        """The settings of the second orientation: the copy's own, else the primary's."""
        own = self.copy or CopySettings()
        codecs = self.codecs if own.codecs is None else tuple(
            c for c in own.codecs if not isinstance(c, NoCodec)
        )  # fmt: skip
        return ResolvedSettings(
            chunks=own.chunks or self.chunks,
            shards=own.shards if own.shards is not None else self.shards,
            codecs=codecs,
            index_dtype=self.index_dtype,
            orientations=self.orientations,
        )


#: What an element gets when neither its rule nor ``defaults`` say: 1 MiB chunks (big enough
#: to write fast, small enough to read selectively), no shards, zstd level 3.
BUILTIN_DEFAULTS = ElementSettings(
    chunks=ChunkSpec(bytes=ByteSize(1 << 20)),
    shards=ShardSpec(),
    codecs=[Zstd(name="zstd", level=3)],
    index_dtype="keep",
)


def resolve_settings(rule: ElementSettings | None, defaults: ElementSettings) -> ResolvedSettings:
    def pick(field: str):
        for source in (rule, defaults, BUILTIN_DEFAULTS):
            if source is not None and getattr(source, field) is not None:
                return getattr(source, field)
        return None

    orientations = pick("orientations")
    return ResolvedSettings(
        chunks=pick("chunks"),
        shards=pick("shards"),
        codecs=tuple(c for c in pick("codecs") if not isinstance(c, NoCodec)),
        index_dtype=pick("index_dtype"),
        orientations=tuple(orientations) if orientations is not None else None,
        copy=pick("copy_"),
    )


@cache
def _glob(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


# --------------------------------------------------------------------------- loading


def layouts_dir() -> Path:
    """Where the shipped layouts live: inside the wheel, or ``layouts/`` of a source checkout."""
    packaged = Path(__file__).parent / "layouts"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "layouts"


def shipped_layouts() -> dict[str, Path]:
    return {p.stem: p for p in sorted(layouts_dir().glob("*.yaml"))}


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
        problems = [f"{label}:{_line(node, e['loc'])}: {_describe(e)}" for e in err.errors()]
        target = data.get("target") if isinstance(data.get("target"), dict) else {}
        problems += [
            f"{label}:{_line(node, loc)}: {_loc_text(loc)}: {message}"
            for loc, message in _unwritable(target, data)
        ]
        raise LayoutError(problems) from None
    for index, rule in enumerate(own.rules):
        rule._origin = f"{label}:{_line(node, ('rules', index))}"

    layout = own
    if own.extends:
        try:
            parent_path = _locate(own.extends, relative_to=path.parent)
        except LayoutError as err:
            raise LayoutError(
                [f"{label}:{_line(node, ('extends',))}: extends: {err.messages[0]}"]
            ) from None
        layout = _merge(_load(parent_path, (*chain, path)), own)
    layout._source = str(path)

    target = layout.target.model_dump()
    problems = [
        f"{label}:{_line(node, loc)}: {_loc_text(loc)}: {message}"
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
        problems.append(f"{label}:{_line(node, ('target',))}: target: {message} ({where})")
    if problems:
        raise LayoutError(problems)
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


def _line(node: yaml.Node | None, loc: tuple) -> int:
    """Line of the deepest YAML node along ``loc`` (1-based)."""
    best = node.start_mark.line if node is not None else 0
    for part in (p for p in loc if not _is_union_tag(p)):
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
            continue  # pydantic's own loc parts (union tags, validators) have no node
    return best + 1


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
    node, data = read_yaml(path, what)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise LayoutError(
            [f"{path.name}:{_line(node, e['loc'])}: {_describe(e, model)}" for e in err.errors()]
        ) from None


def _field_names(loc: tuple, root: Any = None) -> list[str]:
    """Valid keys at ``loc`` in the file's model, for did-you-mean hints."""
    model: Any = root or Layout
    for part in loc:
        if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        field = model.model_fields.get(part)
        if field is None:
            break
        model = _inner_model(field.annotation, part)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _inner_model(annotation: Any, tag: str) -> Any:
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in args:
        found = _inner_model(arg, tag)
        if found is not None:
            return found
    return None


def _describe(error: dict, root: Any = None) -> str:
    loc = tuple(p for p in error["loc"] if not _is_union_tag(p))
    where = _loc_text(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        key = loc[-1] if loc else "?"
        parent = loc[:-1]
        names = _field_names(parent, root)
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
    if kind == "union_tag_invalid":
        return (
            f"{where}: unknown codec {error['ctx']['tag']!r}; use {error['ctx']['expected_tags']}"
        )
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message[0].lower()}{message[1:]}" if message else where


#: Discriminator values of the file formats' tagged unions (codec names, pattern kinds).
UNION_TAGS: set[str] = {"zstd", "blosc", "gzip", "none"}


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the chosen union member to loc, e.g. 'zstd', 'list[...]', 'function-after[...]'
    return isinstance(part, str) and (
        part in UNION_TAGS or "[" in part or part.startswith("function-")
    )


def _loc_text(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def json_schema() -> dict[str, Any]:
    """JSON Schema of the layout file format, for editors and validators."""
    schema = Layout.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "annlayout layout file"
    return schema


__all__ = [
    "SPARSE_ENCODINGS",
    "Blosc",
    "ChunkSpec",
    "Codec",
    "ElementSettings",
    "Gzip",
    "Layout",
    "LayoutError",
    "Match",
    "NoCodec",
    "ResolvedSettings",
    "Rule",
    "ShardSpec",
    "Target",
    "Zstd",
    "json_schema",
    "load_layout",
    "shipped_layouts",
]
