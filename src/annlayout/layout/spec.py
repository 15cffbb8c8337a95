"""Layout files, under the one name the rest of the package and its users import them by.

The work is done in :mod:`annlayout.layout.models` (the pydantic models and rule resolution),
:mod:`annlayout.layout.files` (loading, ``extends``, checks against the target, JSON schema),
:mod:`annlayout.layout.shipped` (the shipped layouts) and :mod:`annlayout.layout.yaml_errors` (located
messages); this module re-exports their public names.
"""

from __future__ import annotations

from annlayout.base.errors import LayoutError
from annlayout.layout.files import json_schema, load_layout
from annlayout.layout.models import (
    BUILTIN_DEFAULTS,
    Blosc,
    ChunkSpec,
    Codec,
    CopySettings,
    ElementSettings,
    EncodingType,
    Gzip,
    IndexDtype,
    Layout,
    Match,
    NoCodec,
    Orientation,
    ResolvedSettings,
    Rule,
    ShardSpec,
    Target,
    Zstd,
    resolve_settings,
)
from annlayout.layout.shipped import layouts_dir, shipped_layouts

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
    "LayoutError",
    "Match",
    "NoCodec",
    "Orientation",
    "ResolvedSettings",
    "Rule",
    "ShardSpec",
    "Target",
    "Zstd",
    "json_schema",
    "layouts_dir",
    "load_layout",
    "resolve_settings",
    "shipped_layouts",
]
