"""After an HTML build, check that the references are complete: every field of the layout
schema (``annlayout schema``) on the layout reference page, and every command and option of
``annlayout --help`` on the CLI page. A gap is a warning, so ``-W`` fails the build."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from sphinx.util import logging

logger = logging.getLogger(__name__)


def _text(path: Path) -> str:
    text = html.unescape(re.sub(r"<[^>]+>", " ", path.read_text(encoding="utf-8")))
    return " ".join(text.split())


def schema_fields() -> list[tuple[str, str]]:
    import annlayout

    schema = annlayout.json_schema()
    models = {"Layout": schema, **schema.get("$defs", {})}
    return [
        (model, field) for model, spec in models.items() for field in spec.get("properties", {})
    ]


def cli_options() -> list[tuple[str, str]]:
    """(command path, option) for every command and option of the CLI."""
    import click

    from annlayout.cli import main

    found: list[tuple[str, str]] = []

    def walk(command: click.Command, path: str) -> None:
        found.append((path, ""))
        for param in command.params:
            for opt in (
                param.opts if isinstance(param, click.Option) else [param.human_readable_name]
            ):
                found.append((path, opt))
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")

    walk(main, "annlayout")
    return found


def check(app: Any, exception: Exception | None) -> None:
    if exception is not None or app.builder.name != "html":
        return
    out = Path(app.outdir)
    reference = out / "layout-reference.html"
    if reference.exists():
        text = _text(reference)
        for model, field in schema_fields():
            if not re.search(rf"(?<![\w-]){re.escape(field)}(?![\w-])", text):
                logger.warning("layout reference lacks %s.%s", model, field)
    cli = out / "cli.html"
    if cli.exists():
        text = _text(cli)
        for command, option in cli_options():
            wanted = re.escape(option or command)  # whole options: --out is not --output
            if not re.search(rf"(?<![\w-]){wanted}(?![\w-])", text, re.IGNORECASE):
                logger.warning("CLI reference lacks %s %s", command, option)


def setup(app: Any) -> dict[str, Any]:
    app.connect("build-finished", check)
    return {"parallel_read_safe": True, "version": "1"}
