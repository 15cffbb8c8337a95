"""Layout models (pydantic v2) and rule resolution: what a layout says, as data.

A layout says, per element of an AnnData store, how it is stored. Everything here is pure:
reading layout files is :mod:`annlayout.layout.files`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    field_validator,
    model_serializer,
    model_validator,
)

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
        if isinstance(value, str | int | float):  # pydantic would say "a valid dictionary"
            raise ValueError(
                f"must be a mapping (shape, rows, major, elements or bytes) or a list (the "
                f"chunk shape), e.g. {{bytes: 1MiB}} (got {value!r})"
            )
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
        if isinstance(value, str | int | float):
            raise ValueError(
                f"must be none, a mapping (bytes, chunks or shape) or a list (the shard "
                f"shape), e.g. {{bytes: 64MiB}} (got {value!r})"
            )
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


# --------------------------------------------------------------------------- schema forms


def _also_accepts(*forms: dict[str, Any]) -> Any:
    """``json_schema_extra`` for a field whose validator also takes shorthand forms
    (``shards: none``, a bare list for a shape, ``codecs: none``): the JSON schema lists them
    beside the model, so editors accept every file loading accepts, the shipped ones first."""

    def extend(schema: dict[str, Any]) -> None:
        options = schema["anyOf"]
        nullable = [o for o in options if o.get("type") == "null"]
        schema["anyOf"] = [*(o for o in options if o not in nullable), *forms, *nullable]

    return extend


#: chunks: [1000, -1] (ChunkSpec._bare_list_is_shape)
CHUNK_FORMS = _also_accepts(
    {
        "type": "array",
        "items": {
            "anyOf": [{"type": "integer", "exclusiveMinimum": 0}, {"const": -1}, {"type": "null"}]
        },
        "description": "an explicit chunk shape; -1 or null means the whole axis",
    }
)
#: shards: none | false | [4096, 100] (ShardSpec._none_and_lists)
SHARD_FORMS = _also_accepts(
    {"const": "none", "description": "no shards"},
    {"const": False},
    {
        "type": "array",
        "items": {"type": "integer", "exclusiveMinimum": 0},
        "description": "an explicit shard shape",
    },
)
#: codecs: none (the _codecs_none validators)
CODEC_FORMS = _also_accepts({"const": "none", "description": "no compression"})

# --------------------------------------------------------------------------- rules


def _codecs_or_none(value: Any) -> Any:
    """``codecs: none`` is no compression; another bare word is a mistake worth naming."""
    if value == "none":
        return []
    if isinstance(value, str):
        raise ValueError(f"must be a list such as [{{name: zstd}}], or none (got {value!r})")
    return value


class CopySettings(_Model):
    """Storage of a sparse matrix's second orientation; what is left out follows the primary."""

    chunks: ChunkSpec | None = Field(
        None, description="Chunks of the copy's arrays.", json_schema_extra=CHUNK_FORMS
    )
    shards: ShardSpec | None = Field(
        None, description="Shards of the copy's arrays.", json_schema_extra=SHARD_FORMS
    )
    codecs: list[Codec] | None = Field(
        None, description="Compressors of the copy's arrays.", json_schema_extra=CODEC_FORMS
    )

    @field_validator("codecs", mode="before")
    @classmethod
    def _codecs_none(cls, value: Any) -> Any:
        return _codecs_or_none(value)


class ElementSettings(_Model):
    """Storage settings for an element; a field left out falls back to ``defaults``."""

    chunks: ChunkSpec | None = Field(
        None,
        description="Chunk size: one of shape, rows, major (sparse), elements or bytes; the "
        "unit every read fetches and decodes whole.",
        json_schema_extra=CHUNK_FORMS,
    )
    shards: ShardSpec | None = Field(
        None,
        description="zarr v3 shards: bytes, chunks per shard, explicit shape, or none.",
        json_schema_extra=SHARD_FORMS,
    )
    codecs: list[Codec] | None = Field(
        None,
        description="Compressors applied to every chunk, in order; [] or none for raw.",
        json_schema_extra=CODEC_FORMS,
    )
    index_dtype: IndexDtype | None = Field(
        None,
        description="Sparse indices and indptr: keep the input's, minimal (int32 where the values "
        "fit, else int64: the types scipy indexes with), int32 or int64.",
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
        return _codecs_or_none(value)

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

    def names(self, path: str) -> bool:
        """Whether the path globs name ``path`` (a rule without globs names none)."""
        return any(_glob(p).fullmatch(path) for p in self.paths)

    def matches(self, path: str, encoding: str) -> bool:
        if self.path is not None and not self.names(path):
            return False
        return self.encoding is None or encoding in self.encodings


class Rule(ElementSettings):
    """Settings for the elements a rule matches; the first matching rule wins."""

    match: Match = Field(description="Which elements (path globs and/or encodings).")
    _origin: str = PrivateAttr("")  # "file:line" of the rule, for messages
    _shipped: bool = PrivateAttr(False)  # from a layout annlayout ships (or one it extends)

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def shipped(self) -> bool:
        """The rule comes from a shipped layout: written for elements a dataset may not
        have (layers, raw, dense X), so matching none of them is no mistake of the user's."""
        return self._shipped


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


__all__ = [
    "BUILTIN_DEFAULTS",
    "Blosc",
    "ChunkSpec",
    "Codec",
    "CopySettings",
    "ElementSettings",
    "EncodingType",
    "Gzip",
    "IndexDtype",
    "Layout",
    "Match",
    "NoCodec",
    "Orientation",
    "ResolvedSettings",
    "Rule",
    "ShardSpec",
    "Target",
    "Zstd",
    "resolve_settings",
]
