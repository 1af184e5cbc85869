"""``diagram``: draw a definition, one instance's path through it, or a lifecycle."""

from __future__ import annotations

from pathlib import Path

import click

from saga_fsm._loading import load_definition
from saga_fsm.cli._app import UsageProblem, main, resolve_store_url, run_async, store_option
from saga_fsm.cli._ids import resolve_id
from saga_fsm.diagrams import (
    FORMATS,
    Diagram,
    DiagramError,
    InstanceDiagram,
    definition_diagram,
    format_for_path,
    lifecycle_diagram,
    load_instance_diagram,
)
from saga_fsm.stores import open_store


def _output_format(output: Path, fmt: str | None) -> str:
    """The format to write: --format, else the suffix's; never one the suffix contradicts
    (no SVG under a .png name)."""
    try:
        by_suffix: str | None = format_for_path(output)
    except DiagramError:
        by_suffix = None
    if fmt is None:
        if by_suffix is None:
            raise UsageProblem(
                f"cannot tell the format of {output.name!r}: use .png, .svg, .dot or .mmd,"
                " or give --format"
            )
        return by_suffix
    if by_suffix is not None and fmt != by_suffix:
        raise UsageProblem(f"--format {fmt} does not match {output.name!r} (a {by_suffix} name)")
    return fmt


def _choose(
    ref: str | None, instance: str | None, lifecycle: str | None, store_url: str | None
) -> Diagram:
    if lifecycle is not None:
        if ref is not None or instance is not None:
            raise UsageProblem("--lifecycle draws a generic machine: give no REF and no --instance")
        return lifecycle_diagram("saga" if lifecycle == "saga" else "step")
    if ref is None:
        raise UsageProblem("give a REF (or --lifecycle saga|step)")
    choreographed = _choreography(ref, instance, store_url)
    if choreographed is not None:
        return choreographed
    definition = load_definition(ref)
    if instance is None:
        if store_url is not None:
            raise UsageProblem("--store is only read with --instance ID")
        return definition_diagram(definition)
    url = resolve_store_url(store_url)

    async def fetch() -> Diagram:
        async with open_store(url, create=False) as store:
            return await load_instance_diagram(store, await resolve_id(store, instance), definition)

    return run_async(fetch)


def _choreography(ref: str, instance: str | None, store_url: str | None) -> Diagram | None:
    """REF's diagram if it names a choreography (an instance: one the tracker follows)."""
    from saga_fsm.choreography._diagram import (
        choreography_at,
        choreography_diagram,
        load_tracked_diagram,
    )

    choreography = choreography_at(ref)
    if choreography is None:
        return None
    if instance is None:
        if store_url is not None:
            raise UsageProblem("--store is only read with --instance ID")
        return choreography_diagram(choreography)
    url = resolve_store_url(store_url)

    async def fetch() -> Diagram:
        async with open_store(url) as store:
            return await load_tracked_diagram(store, instance, choreography)

    return run_async(fetch)


@main.command("diagram")
@click.argument("ref", required=False)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="File to write."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Default: from the output's suffix (.png .svg .dot .gv .mmd), else dot.",
)
@click.option(
    "--instance",
    metavar="ID",
    default=None,
    help="Highlight this saga's path (any unique prefix of its id).",
)
@store_option
@click.option(
    "--lifecycle", type=click.Choice(["saga", "step"]), default=None, help="A generic lifecycle."
)
def diagram(
    ref: str | None,
    output: Path | None,
    fmt: str | None,
    instance: str | None,
    store_url: str | None,
    lifecycle: str | None,
) -> None:
    """Draw REF's state diagram, read from the Machine the engine runs.

    With --instance ID the path that saga took is drawn over it (visited states, edges
    numbered in order, retry counts, current state). Without -o, text formats (dot,
    mermaid, svg) go to stdout. PNG and SVG need Graphviz's dot or graphviz-pure.
    """
    if output is not None:
        fmt = _output_format(output, fmt)
    chosen = _choose(ref, instance, lifecycle, store_url)
    fmt = fmt or "dot"
    if output is None:
        if fmt == "png":
            raise UsageProblem("png is binary: write it to a file with -o FILE")
        click.echo(chosen.render(fmt).decode(), nl=False)
        return
    chosen.save(output, fmt)
    click.echo(f"wrote {output} ({fmt})", err=True)
    if isinstance(chosen, InstanceDiagram):
        _save_children(chosen, output, fmt)


def _save_children(drawn: InstanceDiagram, output: Path, fmt: str) -> None:
    """Each child saga's diagram beside its parent's: ``order.svg`` draws its child
    ``order-1:ship:1`` as ``order.order-1_ship_1.svg`` (and its children likewise)."""
    for child in drawn.children:
        name = (child.saga_id or "child").replace(":", "_").replace("/", "_")
        path = output.with_name(f"{output.stem}.{name}{output.suffix}")
        child.save(path, fmt)
        click.echo(f"wrote {path} ({fmt}): child saga {child.saga_id}", err=True)
        _save_children(child, output, fmt)
