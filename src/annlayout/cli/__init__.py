"""The ``annlayout`` command: parse, call the API, render with rich. Nothing else lives here."""

from __future__ import annotations

import functools
import json
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from annlayout.base import defaults

if TYPE_CHECKING:
    from annlayout.base.options import RunOptions
    from annlayout.planning.memory import MemoryPlan
    from annlayout.planning.plan import Plan

# Commands import what they use: `annlayout --help` and `annlayout layouts` start without
# numpy, zarr, anndata or pydantic (tests/test_cli.py checks which modules they import).

# Piped output (CI logs, files) gets wide tables instead of rich's 80-column default.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 220)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 220)

EXIT_ERROR, EXIT_LAYOUT = 1, 2


def human_size(n: float | None) -> str:
    from annlayout.planning.plan import human_size

    return human_size(n)


def _fail(message: str, code: int = EXIT_ERROR, *, details: list[str] | None = None) -> None:
    """Report an error and exit: one line on stderr, or under ``--json`` one JSON document
    (``{"error": ..., "errors": [...], "exit_code": ...}``) that a pipeline can parse."""
    context = click.get_current_context(silent=True)
    if context is not None and context.params.get("as_json"):
        document = {"error": message, "errors": details or [message], "exit_code": code}
        click.echo(json.dumps(document), err=True)
        sys.exit(code)
    # messages quote user input (paths, YAML, pip extras like annlayout[dask]): never markup
    for line in details or [message]:
        err.print(f"[bold red]error:[/] {escape(line)}", highlight=False, markup=True)
    sys.exit(code)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """One-line errors and exit codes; tracebacks only with ``annlayout --debug``."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from annlayout.base.errors import AnnlayoutError, LayoutError
        from annlayout.storage.commit import Interrupted

        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            with warnings.catch_warnings():
                if not debug:
                    warnings.simplefilter("ignore")
                return command(*args, **kwargs)
        except LayoutError as error:
            if debug:
                raise
            _fail(error.messages[0], EXIT_LAYOUT, details=error.messages)
        except AnnlayoutError as error:
            if debug:
                raise
            _fail(str(error))
        except Interrupted as interrupted:
            err.print(_interrupted_message(interrupted), highlight=False, markup=False)
            sys.exit(128 + interrupted.signum)
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)
        except Exception as error:
            if debug:
                raise
            _fail(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                  " (rerun with --debug for a traceback)")  # fmt: skip

    return wrapper


def _interrupted_message(interrupted: Any) -> str:
    """What an interrupted run left: nothing, or a checkpoint named with the command that
    continues from it."""
    message = f"{interrupted}: nothing was written at the output path"
    kept = interrupted.kept
    if not kept:
        return message
    from annlayout.storage.stores import footprint

    size = sum(footprint(path)[0] for path in kept)
    again = (
        shlex.join(["annlayout", *_ARGS, "--resume"])
        if _ARGS is not None and "--resume" not in _ARGS
        else "the same command with --resume"
    )
    return (
        f"{message}; the work done is kept in {' and '.join(map(str, kept))} "
        f"({human_size(size)}): {again} continues from it, and a run without --resume "
        f"removes {'them' if len(kept) > 1 else 'it'}"
    )


#: the command line of this process (set by :func:`run`), to say how to resume it
_ARGS: list[str] | None = None


class _Annlayout(click.Group):
    """The command group; its options (--debug, --store-backend) are accepted after the
    command name too (`annlayout apply ... --debug`), where users write them."""

    GLOBAL_FLAGS = ("--debug",)
    GLOBAL_VALUES = ("--store-backend",)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        hoisted: list[str] = []
        rest: list[str] = []
        remaining = iter(args)
        for arg in remaining:
            if arg == "--":  # what follows is not for options
                rest += [arg, *remaining]
            elif arg in self.GLOBAL_FLAGS or arg.startswith(
                tuple(f"{v}=" for v in self.GLOBAL_VALUES)
            ):
                hoisted.append(arg)
            elif arg in self.GLOBAL_VALUES:
                hoisted += [arg, *[value for value in [next(remaining, None)] if value is not None]]
            else:
                rest.append(arg)
        return super().parse_args(ctx, hoisted + rest)


@click.group(cls=_Annlayout, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and library warnings.")
@click.option(
    "--store-backend",
    type=click.Choice(["obstore", "fsspec"]),
    envvar="ANNLAYOUT_STORE_BACKEND",
    help="The client for s3:// (gs://, az://) URLs [default: obstore where installed]; "
    "credentials and endpoint come from the AWS_* (GOOGLE_*, AZURE_*) variables.",
)
@click.version_option(package_name="annlayout")
def main(debug: bool, store_backend: str | None) -> None:
    """Declarative storage layouts for AnnData stores (zarr v2/v3, h5ad).

    LAYOUT is a shipped layout name (see `annlayout layouts`) or a path to a YAML file;
    INPUT, OUTPUT and STORE are paths or URLs (s3://bucket/data.zarr). --debug and
    --store-backend may also follow the command name.
    """
    from annlayout.base.malloc import bound_malloc_arenas
    from annlayout.storage.remote import store_backend as use_store_backend

    # for this thread's opens (inspect, plan, bench...); runs also carry it in their
    # RunOptions (run_options below), which hands it to their tasks. Never the environment:
    # $ANNLAYOUT_STORE_BACKEND is only read, as this option's default.
    click.get_current_context().with_resource(use_store_backend(store_backend))
    bound_malloc_arenas()  # before zarr and zarrs start their threads


@main.command("layouts")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@handle_errors
def layouts_command(as_json: bool) -> None:
    """List the shipped layouts."""
    from annlayout.layout.listing import shipped_listing

    listing = [
        {"name": e.name, "target": e.target, "description": " ".join(e.description.split())}
        for e in shipped_listing()
    ]
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    table = Table("name", "target", "description", box=None, header_style="bold")
    for entry in listing:
        table.add_row(f"[cyan]{entry['name']}[/]", entry["target"], entry["description"])
    out.print(table)


@main.command("schema")
@handle_errors
def schema_command() -> None:
    """Print the JSON Schema of layout files (for editors and validators)."""
    from annlayout.layout.files import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


MEMORY_HELP = (
    "Memory budget for copying large elements (e.g. 512MiB, 4GB); what does not fit is "
    "refused before anything is written."
)


def run_options(
    *names: str, memory: str = defaults.MEMORY, help: dict[str, str] | None = None
) -> Callable[[Any], Any]:
    """The options every run shares (annlayout.RunOptions), each defined once here: a command
    takes the ones it has (``names``) and receives them as one ``options: RunOptions``, made
    and checked once (``--workers 0`` is refused in one line). ``--store-backend`` is the
    group's option, read from there. ``help``: a command's own words for an option."""
    helps = {
        "memory": MEMORY_HELP + (" Shared by --workers." if "workers" in names else ""),
        "workers": "Run with N local threads (dask); --memory is shared by them.",
        "scheduler": "Run on the dask.distributed cluster at ADDRESS; its workers must reach "
        "the inputs and OUTPUT (checked before work starts).",
        "verify": "Skip comparing the result with its inputs.",
        "resume": "Continue a run that was killed (same inputs and options); without it a "
        "rerun starts clean.",
        "codec_pipeline": "zarr codec pipeline: zarrs (Rust, parallel) or zarr-python's own.",
        **(help or {}),
    }
    options = {
        "memory": click.option("--memory", default=memory, show_default=True, help=helps["memory"]),
        "workers": click.option(
            "--workers", type=int, default=1, show_default=True, help=helps["workers"]
        ),
        "scheduler": click.option("--scheduler", metavar="ADDRESS", help=helps["scheduler"]),
        "verify": click.option("--no-verify", "no_verify", is_flag=True, help=helps["verify"]),
        "resume": click.option("--resume", is_flag=True, help=helps["resume"]),
        "codec_pipeline": click.option(
            "--codec-pipeline",
            type=click.Choice(["zarrs", "zarr"]),
            default="zarrs",
            show_default=True,
            help=helps["codec_pipeline"],
        ),
    }
    params = {"verify": "no_verify"}  # the option's Python name, where it differs

    def decorate(command: Any) -> Any:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from annlayout.base.options import RunOptions

            given = {name: kwargs.pop(params.get(name, name)) for name in names}
            if "verify" in given:
                given["verify"] = not given["verify"]
            backend = click.get_current_context().find_root().params.get("store_backend")
            return command(*args, options=RunOptions(**given, store_backend=backend), **kwargs)

        for name in reversed(names):
            wrapper = options[name](wrapper)
        return wrapper

    return decorate


def _combining_options(join_help: str, cells: str) -> Callable[[Any], Any]:
    """--join, --label, --keys and --index-unique: concat and append combine their inputs
    the same way (as anndata.concat does); only what the help says of them differs."""
    options = [
        click.option(
            "--join",
            type=click.Choice(["inner", "outer"]),
            default="inner",
            show_default=True,
            help=join_help,
        ),
        click.option("--label", metavar="COLUMN", help=f"An obs column recording {cells} input."),
        click.option("--keys", metavar="K1,K2,...", help="The --label values, one per input."),
        click.option("--index-unique", metavar="SEP", help="Unique obs names: name + SEP + key."),
    ]

    def decorate(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@main.command("plan")
@click.argument("layout")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option(
    "--memory",
    help="Also show how `apply --memory SIZE` (or, for several INPUTs, `concat --memory "
    "SIZE`) would copy each element (blocks, transposes, peak memory), and refuse, as the "
    "command would, an element that does not fit.",
)
@click.option(
    "--whole-below",
    default=defaults.WHOLE_BELOW,
    show_default=True,
    help="With --memory: elements smaller than this are copied whole, as apply's option.",
)
@_combining_options(
    "For several INPUTs, as concat's: genes every input has (inner), or any input has (outer).",
    "each cell's",
)
@handle_errors
@run_options("workers", help={"workers": "With --memory: the budget is shared by N."})
def plan_command(
    layout: str,
    inputs: tuple[str, ...],
    as_json: bool,
    memory: str | None,
    whole_below: str,
    join: str,
    label: str | None,
    keys: str | None,
    index_unique: str | None,
    options: RunOptions,
) -> None:
    """Show how LAYOUT would store INPUT, element by element (writes nothing). Several
    INPUTs: the store `concat LAYOUT INPUT... OUTPUT` would write, planned from their
    metadata and refused where concat would refuse (at its default --memory when none is
    given). To plan an append, run `annlayout append STORE INPUT... --plan`.

    \b
    LAYOUT  a shipped layout name (`annlayout layouts`) or a layout file
    INPUT   the AnnData store to plan for: .h5ad or .zarr, a path or an s3:// URL
    """
    import annlayout
    from annlayout.base.errors import PlanError
    from annlayout.planning.memory import memory_plan, parse_size, source_dtypes

    model: MemoryPlan | None
    if len(inputs) > 1:
        from annlayout.combine.concat import concat_plan

        if parse_size(whole_below, "--whole-below") != parse_size(defaults.WHOLE_BELOW):
            raise PlanError("--whole-below: apply's option; concat has none")
        if memory is not None:
            options = replace(options, memory=memory)
        plan, checked = concat_plan(
            layout, inputs, join=join, label=label,  # type: ignore[arg-type]
            keys=keys.split(",") if keys else None, index_unique=index_unique, options=options,
        )  # fmt: skip
        # checked at concat's default budget without --memory; shown when asked for
        model = checked if memory is not None else None
    elif join != "inner" or label or keys or index_unique:
        raise PlanError(
            "--join, --label, --keys, --index-unique: concat's options, for several INPUTs; "
            "one was given"
        )
    elif memory is None:
        plan, model = annlayout.plan(layout, inputs[0]), None
    else:
        survey = annlayout.survey(inputs[0])
        plan = annlayout.make_plan(annlayout.load_layout(layout), survey)
        small = parse_size(whole_below, "--whole-below")
        model = memory_plan(plan, source_dtypes(survey), parse_size(memory), options.workers, small)
        model.check()
    if as_json:
        data = plan.to_dict()
        if model is not None:
            data["memory"] = model.to_json()
        click.echo(json.dumps(data, indent=2))
        return
    render_plan(plan)
    if model is not None:
        render_memory(model)


def _shape(value: Any) -> str:
    return "-" if value is None else "×".join(f"{n:,}" for n in value) or "()"


def render_plan(plan: Plan) -> None:
    target = plan.target
    where = "h5ad" if target.format == "h5ad" else f"zarr v{target.zarr_format}"
    out.print(f"[bold]{escape(plan.layout)}[/] → {where}  ({escape(plan.source)})", highlight=False)
    table = Table(
        "element", "encoding", "rule", "array", "shape", "dtype", "chunks", "shards", "codecs",
        "chunk", "objects", header_style="bold", box=None, pad_edge=False,
    )  # fmt: skip
    for element in plan.elements:
        rule = "-" if element.rule is None else str(element.rule)
        label = element.path
        if element.orientation:
            label += f" ({'+'.join([element.orientation, *element.copies])})"
        for i, array in enumerate((*element.arrays, *element.copy_arrays)):
            table.add_row(
                label if i == 0 else "",
                element.encoding if i == 0 else "",
                rule if i == 0 else "",
                array.name or "·",
                _shape(array.shape),
                array.dtype,
                _shape(array.chunks),
                _shape(array.shards),
                array.codecs,
                human_size(array.chunk_bytes),
                f"{array.n_objects:,}",
                style="yellow" if array.warnings else None,
            )
    out.print(table)
    out.print(f"{len(plan.elements)} elements, {plan.n_objects:,} objects", highlight=False)
    for warning in plan.all_warnings():
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)


def render_memory(model: Any) -> None:
    """Per element: how apply copies it and the memory one block or transpose holds."""
    per_worker = (
        f", {human_size(model.per_worker)} per worker for {model.workers}"
        if model.workers > 1
        else ""
    )
    out.print(f"[bold]memory[/]: --memory {human_size(model.budget)}{per_worker}", highlight=False)
    table = Table(
        "element", "copied as", "blocks", "block read", "passes", "peak", header_style="bold",
        box=None, pad_edge=False,
    )  # fmt: skip
    for element in model.elements:
        largest = max((a.unit * a.row_bytes for a in element.arrays), default=0)
        table.add_row(
            element.path,
            element.how,
            f"{element.n_blocks:,}" if element.arrays else "-",
            human_size(largest) if largest else "-",
            "+".join(str(t.n_passes) for t in element.transposes) or "-",
            human_size(element.peak),
        )
    out.print(table)
    peak = max((e.peak for e in model.elements if e.streamed), default=0)
    out.print(
        f"largest streamed block or transpose: {human_size(peak)} of "
        f"{human_size(model.per_worker)} per worker (estimates; elements copied whole are "
        "not bounded by --memory)",
        highlight=False,
    )
    for note in model.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


@main.command("inspect")
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the survey as JSON.")
@handle_errors
def inspect_command(store: str, as_json: bool) -> None:
    """Show how STORE is stored now, and the layout it was written with, if any.

    \b
    STORE  an AnnData store: .h5ad or .zarr, a path or an s3:// URL
    """
    from annlayout.planning.survey import survey_store

    survey = survey_store(store)
    if as_json:
        click.echo(survey.model_dump_json(indent=2))
        return
    where = "h5ad" if survey.format == "h5ad" else f"zarr v{survey.zarr_format}"
    out.print(f"[bold]{escape(store)}[/]: {where}, {_shape(survey.shape)}", highlight=False)
    if survey.provenance:
        p = survey.provenance
        out.print(
            f"written with layout [cyan]{p.get('layout')}[/] (sha256 {str(p.get('layout_sha256'))[:12]}, "
            f"annlayout {p.get('annlayout_version')})",
            highlight=False,
        )
    else:
        out.print("written without annlayout (no layout recorded)")
    for upgrade in survey.upgrades:  # elements below are listed as anndata reads them
        out.print(f"[cyan]legacy form:[/] {escape(upgrade)}", highlight=False)
    table = Table(
        "element", "encoding", "array", "shape", "dtype", "chunks", "shards", "codecs", "stored",
        header_style="bold", box=None, pad_edge=False,
    )  # fmt: skip
    total = 0
    for element in survey.elements:
        for i, array in enumerate(element.arrays):
            total += array.stored_bytes or 0
            table.add_row(
                element.path if i == 0 else "",
                element.encoding if i == 0 else "",
                array.name or "·",
                _shape(array.shape),
                array.dtype,
                _shape(array.chunks),
                _shape(array.shards),
                array.codecs or "-",
                human_size(array.stored_bytes),
            )
    out.print(table)
    out.print(f"{len(survey.elements)} elements, {human_size(total)} stored", highlight=False)


@main.command("apply")
@click.argument("layout")
@click.argument("input")
@click.argument("output")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option(
    "--whole-below",
    default=defaults.WHOLE_BELOW,
    show_default=True,
    help="Copy elements smaller than this whole; stream the rest in blocks.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option("--verbose", "-v", is_flag=True, help="List each legacy form that was upgraded.")
@handle_errors
@run_options(
    "memory", "workers", "scheduler", "verify", "codec_pipeline", "resume",
    help={
        "resume": "Continue a run that was killed (same INPUT, layout, --memory and --workers) "
        "from the blocks it completed; without it a rerun starts clean. Local zarr outputs.",
    },
)  # fmt: skip
def apply_command(
    layout: str,
    input: str,
    output: str,
    overwrite: bool,
    whole_below: str,
    as_json: bool,
    quiet: bool,
    verbose: bool,
    options: RunOptions,
) -> None:
    """Rewrite INPUT (h5ad or zarr) into OUTPUT with LAYOUT, out of core.

    \b
    LAYOUT  a shipped layout name (`annlayout layouts`) or a layout file
    INPUT   the AnnData store to read: .h5ad or .zarr, a path or an s3:// URL
    OUTPUT  the store to write, named for the layout's format (.zarr or .h5ad)

    Large elements are copied shard by shard within --memory; the input is only read. OUTPUT
    is built beside its final path, verified against INPUT, and renamed into place only when
    complete, so it is either the whole new store or untouched. An s3:// OUTPUT is built and
    verified in $ANNLAYOUT_STAGING (default: the temporary directory, when it has room) and
    uploaded (to a new URL while it is verified), its root metadata last, once verified.
    """
    import annlayout

    with _progress(enabled=not (quiet or as_json)) as progress:
        result = annlayout.apply(
            layout,
            input,
            output,
            overwrite=overwrite,
            options=replace(options, progress=progress),
            small_element=whole_below,
        )
    summary = result.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif not quiet:
        for note in result.notes:
            err.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
        _print_upgrades(result.upgrades, verbose)
        checked = (
            f" ({result.seconds - result.verify_seconds:.1f} s writing, "
            f"{result.verify_seconds:.1f} s verifying)"
            if result.verified
            else ""
        )
        if result.resumed_tasks:
            err.print(
                f"resumed: {result.resumed_tasks:,} task{'s' if result.resumed_tasks != 1 else ''}"
                " done by the killed run skipped",
                highlight=False,
            )
        out.print(
            f"wrote {'and verified ' if result.verified else ''}[bold]{result.path}[/] with "
            f"layout [cyan]{result.layout}[/] in {result.seconds:.1f} s{checked}: "
            f"{summary['elements']} elements, "
            f"{summary['objects']:,} objects, read {human_size(result.bytes_read)}, "
            f"wrote {human_size(result.bytes_written)}, peak memory {human_size(result.peak_rss)}",
            highlight=False,
        )


def _print_upgrades(upgrades: list[str], verbose: bool) -> None:
    """Legacy forms read and written in today's encodings: one line, or each with --verbose
    (an anndata 0.6 file has a dozen, the same for every such file)."""
    if verbose:
        for upgrade in upgrades:
            err.print(f"[cyan]upgraded:[/] {escape(upgrade)}", highlight=False)
    elif upgrades:
        forms = f"{len(upgrades)} legacy form" + ("s" if len(upgrades) > 1 else "")
        err.print(
            f"[cyan]upgraded:[/] {forms} of older anndata or scanpy read as today's encodings, "
            "as anndata reads them (--verbose lists them)",
            highlight=False,
        )


@main.command("concat")
@click.argument("layout")
@click.argument("paths", nargs=-1, required=True, metavar="INPUT... OUTPUT")
@_combining_options(
    "Genes every input has (inner), or any input has (outer: absent ones are zeros).",
    "each cell's",
)
@click.option(
    "--merge",
    type=click.Choice(["same", "unique", "first", "only"]),
    help="How var, varm and uns columns that differ between inputs are kept (anndata's merge=).",
)
@click.option(
    "--shuffle",
    type=int,
    metavar="SEED",
    help="Permute the cells at random (the same SEED, the same order), out of core; the "
    "order is kept in uns['annlayout_order'].",
)
@click.option("--groupby", metavar="COLUMN", help="Order the cells by an obs column instead.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option(
    "--scratch",
    "scratch_at",
    metavar="URL_OR_PATH",
    help="Where the combined inputs and the tasks' files go (a directory or an s3:// prefix "
    "every worker reaches); default: beside OUTPUT, or the local temporary directory for an "
    "s3:// OUTPUT without --scheduler. Removed at the end unless kept for --resume.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@handle_errors
@run_options(
    "memory", "workers", "scheduler", "verify", "codec_pipeline", "resume",
    help={
        "workers": "Combine the inputs and write the layout with N threads (dask); --memory "
        "is shared.",
        "scheduler": "Combine and write on a dask cluster; its workers must reach the inputs, "
        "OUTPUT and the scratch (checked before work starts).",
        "resume": "Continue a run that was killed (same inputs and options): combining the "
        "inputs from the rows (or, with --workers/--scheduler, the tasks) it recorded, the "
        "layout step from the blocks it completed; without it a rerun starts clean.",
    },
)  # fmt: skip
def concat_command(
    layout: str,
    paths: tuple[str, ...],
    join: str,
    label: str | None,
    keys: str | None,
    index_unique: str | None,
    merge: str | None,
    shuffle: int | None,
    groupby: str | None,
    overwrite: bool,
    scratch_at: str | None,
    as_json: bool,
    quiet: bool,
    options: RunOptions,
) -> None:
    """Combine INPUT stores (h5ad, zarr; local or s3://) into OUTPUT with LAYOUT, as
    anndata.concat would, streaming X and the layers every input has.

    \b
    LAYOUT  a shipped layout name (`annlayout layouts`) or a layout file
    INPUT   AnnData stores to combine, in order: .h5ad or .zarr, paths or s3:// URLs
    OUTPUT  the store to write (the last path), named for the layout's format
    """
    from annlayout.combine.concat import ConcatError, concat

    if len(paths) < 2:
        raise ConcatError("concat: give at least one INPUT and the OUTPUT")
    *inputs, output = paths
    if Path(output).is_file() and not overwrite:  # an input file where OUTPUT goes
        raise ConcatError(
            f"{output}: the last path is OUTPUT, and this is an existing file; was OUTPUT "
            "left out? (--overwrite replaces it)"
        )
    with _progress(enabled=not (quiet or as_json)) as progress:
        result = concat(
            layout, inputs, output, join=join, label=label,  # type: ignore[arg-type]
            keys=keys.split(",") if keys else None, index_unique=index_unique,
            merge=merge, shuffle=shuffle, groupby=groupby,  # type: ignore[arg-type]
            overwrite=overwrite, scratch_at=scratch_at,
            options=replace(options, progress=progress),
        )  # fmt: skip
    if as_json:
        click.echo(json.dumps(result.summary(), indent=2))
    elif not quiet:
        for note in result.notes:
            err.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
        out.print(
            f"wrote [bold]{result.path}[/] with layout [cyan]{result.layout}[/] from "
            f"{len(inputs)} inputs in {result.seconds:.1f} s"
            + (", verified" if result.verified else "")
            + f", peak memory {human_size(result.peak_rss)}",
            highlight=False,
        )
        if result.mixing is not None and shuffle is not None:  # input order has none to tell
            got, uniform = result.mixing
            out.print(
                f"mixing: {got:.2f} bits of input entropy per 256-cell window "
                f"({uniform:.2f} under a uniform shuffle)",
                highlight=False,
            )


@main.command("append")
@click.argument("store")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@_combining_options(
    "inner: every input must have all the store's genes; outer: absent ones are zeros.",
    "each new cell's",
)
@click.option(
    "--plan",
    "plan_only",
    is_flag=True,
    help="Write nothing: show the memory model of growing STORE's elements within --memory "
    "(as `plan --memory` shows apply's), refusing what the append would refuse.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@handle_errors
@run_options("memory", "verify", "codec_pipeline")
def append_command(
    store: str,
    inputs: tuple[str, ...],
    join: str,
    label: str | None,
    keys: str | None,
    index_unique: str | None,
    plan_only: bool,
    as_json: bool,
    quiet: bool,
    options: RunOptions,
) -> None:
    """Add the cells of INPUT stores to STORE, in its recorded layout and with its genes:
    shards before the last partial one are kept, not rewritten. Atomic: an interrupted or
    failed append leaves STORE as it was.

    \b
    STORE  a zarr store annlayout wrote (apply, concat): a path or an s3:// URL
    INPUT  AnnData stores whose cells are added, in order: .h5ad or .zarr
    """
    from annlayout.combine.append import append, append_plan

    if plan_only:
        model = append_plan(store, inputs, join=join, options=options)  # type: ignore[arg-type]
        if as_json:
            document = {"store": store, "inputs": list(inputs), "memory": model.to_json()}
            click.echo(json.dumps(document, indent=2))
        else:
            out.print(
                f"[bold]append[/] {len(inputs)} input{'s' if len(inputs) > 1 else ''} to "
                f"{escape(store)}: its elements that grow, at their grown size",
                highlight=False,
            )
            render_memory(model)
        return
    with _progress(enabled=not (quiet or as_json)) as progress:
        result = append(
            store, inputs, join=join, label=label,  # type: ignore[arg-type]
            keys=keys.split(",") if keys else None, index_unique=index_unique,
            options=replace(options, progress=progress),
        )  # fmt: skip
    if as_json:
        click.echo(json.dumps({**result.summary(), "inputs": list(inputs)}, indent=2))
    elif not quiet:
        for note in result.notes:
            err.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
        out.print(
            f"appended {result.n_obs_added:,} cells to [bold]{result.path}[/] "
            f"({result.n_obs_before:,} before) with layout [cyan]{result.layout}[/] in "
            f"{result.seconds:.1f} s" + (", verified" if result.verified else "")
            + f": kept {human_size(result.linked_bytes)} as it was, wrote "
            f"{human_size(result.written_bytes)}, peak memory {human_size(result.peak_rss)}",
            highlight=False,
        )  # fmt: skip


@contextmanager
def _progress(enabled: bool):
    """A progress bar (bytes copied, rate, ETA) on a terminal; nothing otherwise."""
    if not enabled or not err.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("copying", total=None)

        def update(what: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@main.command("verify")
@click.argument("source", metavar="INPUT")
@click.argument("rewritten", metavar="OUTPUT")
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@click.option("--verbose", "-v", is_flag=True, help="List each legacy form that was upgraded.")
@handle_errors
@run_options(
    "memory",
    memory=defaults.VERIFY_MEMORY,
    help={
        "memory": "Memory budget for comparing blocks (and transposes, where orientations differ)."
    },
)
def verify_command(
    source: str, rewritten: str, as_json: bool, verbose: bool, options: RunOptions
) -> None:
    """Compare every element of OUTPUT with INPUT; exit 1 if any differs.

    \b
    INPUT   the original AnnData store (.h5ad or .zarr, a path or an s3:// URL)
    OUTPUT  its rewrite, e.g. what `annlayout apply` wrote

    Values, dtypes, shapes, encodings, obs/var indexes, categories and uns are compared, large
    arrays in bounded memory. Chunks, shards, codecs and sparse index dtypes may differ. Both
    stores are read as anndata reads them: a legacy form of INPUT (anndata < 0.8) and its
    upgrade in OUTPUT are the same element (counted as upgraded, listed with --verbose), not
    a difference.
    """
    from annlayout.verify.compare import verify_report

    report = verify_report(source, rewritten, memory=options.budget)
    differences = report.differences
    if as_json:
        data = {"equal": not differences, "differences": differences, "upgrades": report.upgrades}
        click.echo(json.dumps(data, indent=2))
    else:
        _print_upgrades(report.upgrades, verbose)  # a legacy form and its upgrade are equal
        for line in differences:
            out.print(f"[red]differs:[/] {escape(line)}", highlight=False)
        if not differences:
            out.print(f"{rewritten} holds the same data as {source}", highlight=False)
    if differences:
        sys.exit(EXIT_ERROR)


@main.command("bench")
@click.argument("input")
@click.option("--workload", "-w", required=True, help="A shipped workload name or a YAML file.")
@click.option(
    "--layout",
    "layouts",
    multiple=True,
    help="A candidate layout (repeatable; default: every shipped zarr layout).",
)
@click.option(
    "--search",
    is_flag=True,
    help="Also try variants of the best candidate (chunks, codecs, orientations).",
)
@click.option(
    "--sample",
    default="auto",
    show_default=True,
    help="Benchmark on N cells of INPUT; 'auto': as many as the workload needs (a batch at "
    "most 10% of them, a full scan's block, 8 of every candidate's X chunks, 10,000 at least); "
    "'all': every cell.",
)
@click.option(
    "--sample-mode", type=click.Choice(["random", "first"]), default="random", show_default=True
)
@click.option(
    "--reader",
    type=click.Choice(
        ["annlayout", "sparse_dataset-zarrs", "sparse_dataset-zarr", "read_lazy", "annbatch"]
    ),
    default="annlayout",
    show_default=True,
    help="The reader to recommend for: a store laid out for one client may not suit another. "
    "Every installed reader is measured either way. Training patterns are read by loaders: "
    "annlayout's and annbatch's Loader (annbatch reads training patterns only).",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Timing rounds per pattern, reader and candidate (each its own draw of the reads, "
    "the pattern's operations spread over them): a figure's interval is the rounds' range.",
)
@click.option(
    "--storage",
    default="local",
    show_default=True,
    help="local; sim:rtt=20ms,bandwidth=200MB/s,concurrency=16 (simulated object storage); "
    "or a URL such as s3://bucket/prefix: candidates are written there, read from there, and "
    "removed afterwards.",
)
@click.option(
    "--max-size", help="Exclude candidates larger than this multiple of the smallest, e.g. 1.5x."
)
@click.option("--max-objects", type=int, help="Exclude candidates with more stored objects.")
@click.option(
    "--objective",
    type=click.Choice(["time", "cost", "balanced"]),
    default="time",
    show_default=True,
    help="What to recommend for: time (the fastest score); cost (fewest dollars per workload "
    "epoch, annlayout's reader); balanced (lowest geometric mean of score / best score and "
    "cost / best cost).",
)
@click.option(
    "--prices",
    "prices_file",
    type=click.Path(path_type=Path),
    help="A YAML prices file (per 1,000 GET/HEAD/PUT/POST/LIST requests, egress per GB); "
    "default: S3 Standard us-east-1. Set egress_per_gb: 0 for readers in the bucket's region.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory for recommended.yaml and the reports.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the result (recommendation, reports, skipped "
    "readers) as JSON on stdout.",
)  # fmt: skip
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@handle_errors
def bench_command(
    input: str,
    workload: str,
    layouts: tuple[str, ...],
    search: bool,
    sample: str | None,
    sample_mode: str,
    reader: str,
    rounds: int,
    storage: str,
    max_size: str | None,
    max_objects: int | None,
    objective: str,
    prices_file: Path | None,
    out_dir: Path,
    as_json: bool,
    quiet: bool,
) -> None:
    """Measure WORKLOAD's access patterns on candidate layouts of INPUT; recommend the best.

    \b
    INPUT  the AnnData store to measure on (.h5ad or .zarr, a path or an s3:// URL);
           --sample N measures on N of its cells

    Every pattern is timed in --rounds rounds on every candidate; a candidate is the clear
    winner only when it is ahead of every other by more than the rounds' spread, otherwise
    the tie is broken by bytes on disk, then stored objects, then write time, and the report
    says which. Requests (GET, PUT, LIST, HEAD) and bytes are counted per operation and per
    epoch (one full pass of each pattern over the whole dataset, also with --sample) and
    priced with --prices. Writes recommended.yaml (a layout file: apply it with `annlayout
    apply`; a comment at its top says why it won), report.md, report.json, report.png and
    report.svg into --out.
    Each stage (sampling, writing a candidate, measuring a pattern) is shown on stderr: a
    status line on a terminal, one line per stage otherwise.
    """
    import tempfile

    from annlayout.apply import ApplyError
    from annlayout.bench import load_workload, parse_storage, run_bench
    from annlayout.bench.cost import load_prices, money
    from annlayout.bench.report import outcome, reason, write_reports

    try:
        simulation = parse_storage(storage)
    except ValueError as error:
        raise ApplyError(str(error)) from None
    limit = None
    if max_size is not None:
        try:
            limit = float(max_size.lower().removesuffix("x"))
        except ValueError:
            raise ApplyError(f"--max-size {max_size!r}: expected e.g. 1.5x") from None
    chosen_sample: int | str | None = sample
    if sample not in (None, "auto", "all"):
        try:
            chosen_sample = int(sample)
        except ValueError:
            raise ApplyError(
                f"--sample {sample!r}: expected a number of cells, auto or all"
            ) from None
        if chosen_sample < 1:
            raise ApplyError(f"--sample {sample!r}: expected a positive number of cells")
    loaded = load_workload(workload)
    prices = load_prices(prices_file)
    with tempfile.TemporaryDirectory(
        prefix="annlayout-bench-", dir=out_dir.parent if out_dir.parent.is_dir() else None
    ) as work:
        with _stages(enabled=not (quiet or as_json)) as progress:
            result = run_bench(
                input, loaded, workdir=Path(work), layouts=list(layouts) or None,
                storage=simulation, sample=chosen_sample, sample_mode=sample_mode,
                search=search, max_size=limit, max_objects=max_objects, objective=objective,
                prices=prices, progress=progress, reader=reader, rounds=rounds,
            )  # fmt: skip
        paths = write_reports(result, out_dir)
    if as_json:
        click.echo(json.dumps(outcome(result, paths), indent=2))
        return
    if quiet:
        return
    for skipped, why in result.skipped_readers.items():
        err.print(f"[yellow]note:[/] {skipped} was not measured: {escape(why)}", highlight=False)
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    out.print(escape(reason(result)), highlight=False)
    out.print(
        f"${money(result.winner.cost_per_epoch)} per epoch; wrote {paths['recommended']}, "
        f"{paths['markdown'].name}, {paths['json'].name}, {paths['png'].name}, "
        f"{paths['svg'].name}",
        highlight=False,
    )


@contextmanager
def _stages(enabled: bool):
    """A long command's stages on stderr: a status line on a terminal; elsewhere (CI logs,
    pipes) one line per stage with the seconds since the start, so a reader sees it move and
    where the time goes; nothing when not ``enabled``."""
    import time

    if not enabled:
        yield lambda message: None
    elif err.is_terminal:
        with err.status("starting") as status:
            yield status.update
    else:
        started = time.perf_counter()

        def line(message: str) -> None:
            elapsed = time.perf_counter() - started
            err.print(f"{elapsed:5.1f} s  {escape(message)}", highlight=False)

        yield line


@main.command("generate")
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--cells", default=5_000, show_default=True, help="Number of cells (obs), in all.")
@click.option("--genes", default=2_000, show_default=True, help="Number of genes (var).")
@click.option("--nnz-per-cell", default=900.0, show_default=True, help="Mean nonzeros per cell.")
@click.option(
    "--files",
    default=None,
    type=int,
    help="Write a collection instead: OUTPUT becomes a directory (a name without an "
    "extension) of this many .h5ad files (part-000.h5ad, ...), the cells split between them, "
    "each with its own 90% of the genes in its own order, its own cell types, and repeating "
    "barcodes.",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@handle_errors
def generate_command(
    output: Path,
    cells: int,
    genes: int,
    nnz_per_cell: float,
    files: int | None,
    seed: int,
    overwrite: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Write a synthetic dataset with realistic skewed counts to OUTPUT (.h5ad or .zarr), or
    with --files a collection of h5ad files that differ the way real ones do. Single datasets
    and collections share one gene universe and one X_pca width, so they combine (concat,
    append) with each other.

    \b
    OUTPUT  a .h5ad or .zarr path; with --files, a directory name (no extension)
    """
    import time

    from annlayout.apply import ApplyError
    from annlayout.generate.synthetic import check_sizes
    from annlayout.storage.commit import atomic_output

    check_sizes(cells, genes, nnz_per_cell, files)
    _check_generate_output(output, files)
    if output.exists() and not overwrite:
        raise ApplyError(f"{output}: already exists (use --overwrite to replace it)")
    if not output.absolute().parent.is_dir():
        raise ApplyError(f"{output.parent}: the output's directory does not exist")
    start = time.perf_counter()
    with _steps(enabled=not (quiet or as_json)) as step, atomic_output(output) as tmp:
        # the whole dataset or collection, or nothing
        if files is None:
            nnz = _generate_one(tmp, output, cells, genes, nnz_per_cell, seed, step)
        else:
            nnz = _generate_parts(tmp, files, cells, genes, nnz_per_cell, seed, step)
    if as_json:
        summary = {
            "output": str(output), "cells": cells, "genes": genes, "nonzeros": nnz,
            "files": 1 if files is None else files,
            "seconds": round(time.perf_counter() - start, 3),
        }  # fmt: skip
        click.echo(json.dumps(summary, indent=2))
    elif not quiet:
        shape = (
            f"{cells:,} cells × {genes:,} genes"
            if files is None
            else f"{files} files, {cells:,} cells over a universe of {genes:,} genes"
        )
        out.print(f"wrote [bold]{output}[/]: {shape}, {nnz:,} nonzeros", highlight=False)


GENERATED_SUFFIXES = (".h5ad", ".zarr")
Step = Callable[[str], None]  # says what a command is doing now


def _check_generate_output(output: Path, files: int | None) -> None:
    """OUTPUT's extension says what is written: a file (.h5ad) or store (.zarr), or, with
    --files, a directory, whose name must not pass for one of those."""
    from annlayout.base.errors import GenerateError

    suffix = output.suffix.lower()
    if files is not None and suffix in (*GENERATED_SUFFIXES, ".h5"):
        raise GenerateError(
            f"{output}: with --files OUTPUT is a directory of .h5ad files; give a directory "
            f"name without an extension, e.g. {output.with_suffix('')}"
        )
    if files is None and suffix not in GENERATED_SUFFIXES:
        raise GenerateError(
            f"{output}: OUTPUT must end in .h5ad or .zarr (or give --files N for a "
            "directory of .h5ad files)"
        )


def _generate_one(
    tmp: Path, output: Path, cells: int, genes: int, nnz_per_cell: float, seed: int, step: Step
) -> int:
    from annlayout.generate.synthetic import make_dataset

    step(f"generating {cells:,} cells × {genes:,} genes")
    adata = make_dataset(cells, genes, nnz_per_cell=nnz_per_cell, seed=seed)
    step(f"writing {output}")
    if output.suffix.lower() == ".zarr":
        adata.write_zarr(tmp)
    else:
        adata.write_h5ad(tmp)
    return int(adata.X.nnz)


def _generate_parts(
    tmp: Path, files: int, cells: int, genes: int, nnz_per_cell: float, seed: int, step: Step
) -> int:
    from annlayout.generate.synthetic import collection_sizes, make_part

    tmp.mkdir()
    nnz = 0
    for part, n_obs in enumerate(collection_sizes(cells, files)):
        step(f"file {part + 1} of {files}: generating {n_obs:,} cells")
        adata = make_part(part, n_obs, genes, nnz_per_cell=nnz_per_cell, seed=seed)
        step(f"file {part + 1} of {files}: writing part-{part:03d}.h5ad")
        adata.write_h5ad(tmp / f"part-{part:03d}.h5ad")
        nnz += adata.X.nnz
        del adata
    return nnz


@contextmanager
def _steps(enabled: bool) -> Iterator[Step]:
    """What a long command is doing, with the time elapsed, on a terminal's stderr (a spinner
    line that disappears when done); nothing when piped or disabled."""
    if not enabled or not err.is_terminal:
        yield lambda message: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("starting", total=None)
        yield lambda message: bar.update(task, description=message)


# Commands that use dask themselves: bench (anndata's read_lazy), --workers, --scheduler.
USES_DASK = ("bench", "--workers", "--scheduler")


def run(args: list[str] | None = None) -> None:
    """The console script: :func:`main` in a process of its own. anndata imports dask.array
    whenever dask is installed (about 0.8 s of each process, more than the whole copy of a
    50,000-cell h5ad takes), though only its lazy reading uses it; a command that does not
    use dask runs with dask hidden, so anndata starts without it."""
    global _ARGS
    args = sys.argv[1:] if args is None else args
    _ARGS = list(args)
    if "dask" not in sys.modules and not any(a.startswith(USES_DASK) for a in args):
        sys.modules["dask"] = None  # type: ignore[assignment]  # import dask: ImportError
    main(args)
