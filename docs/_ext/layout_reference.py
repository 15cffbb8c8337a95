"""``layout-reference``: the layout file reference, generated from annlayout's JSON schema.

The schema is what ``annlayout schema`` prints, built from the pydantic models, so the
reference lists every field with its type, default and description and cannot drift from the
code. A field without a description is a build warning (and so an error under ``-W``).
"""

from __future__ import annotations

import json
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)
ROOT = "Layout"


def _label(name: str) -> str:
    return f"layout-ref-{name.lower()}"


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"{{ref}}`{name} <{_label(name)}>`"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"]
            text = " \\| ".join(_type(s) for s in options)
            return text + (" \\| null" if len(options) < len(schema[key]) else "")
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        items = _type(schema.get("items", {}))
        return f"list of ({items})" if " \\| " in items else f"list of {items}"
    bounds = [
        f"{symbol} {schema[key]}"
        for key, symbol in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"))
        if key in schema
    ]
    if "pattern" in schema:
        bounds.append(f"matching `{schema['pattern']}`")
    return " ".join([kind, *bounds])


def _default(field: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    return f"`{json.dumps(field['default'])}`" if "default" in field else "none"


def reference_lines(schema: dict[str, Any]) -> tuple[list[str], list[str]]:
    """MyST markdown for every model of the schema (root first), and the fields lacking a
    description."""
    models = {ROOT: schema, **schema.get("$defs", {})}
    lines: list[str] = []
    undocumented: list[str] = []
    for name, model in models.items():
        title = "Layout file (top level)" if name == ROOT else name
        lines += [f"({_label(name)})=", f"## {title}", ""]
        if model.get("description"):
            lines += [" ".join(model["description"].split()), ""]
        lines += ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]
        required = set(model.get("required", []))
        for field, spec in model.get("properties", {}).items():
            description = " ".join(spec.get("description", "").split()).replace("|", "\\|")
            if not description:
                undocumented.append(f"{name}.{field}")
            cells = [f"`{field}`", _type(spec), _default(spec, field in required), description]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines, undocumented


class LayoutReference(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        import annlayout

        lines, undocumented = reference_lines(annlayout.json_schema())
        for field in undocumented:
            logger.warning(
                "layout reference: %s has no description in annlayout.layout.spec", field,
                location=self.get_location(),
            )  # fmt: skip
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, "layout_reference"), container)
        return container.children


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("layout-reference", LayoutReference)
    return {"parallel_read_safe": True, "version": "1"}
