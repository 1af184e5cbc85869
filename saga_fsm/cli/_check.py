"""``check``: property-test a saga definition from the command line.

Explores every path the definition's Machine allows under injected failures,
timeouts, crashes, cancels and operator retries, with the real actions, and prints
how many paths it explored, the transition coverage, and either "every property
holds" (exit 0) or the shrunk counterexample as a scenario and the invariant it
broke (exit 1). Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import click

from saga_fsm._errors import SagaError
from saga_fsm._loading import load_definition, resolve_reference
from saga_fsm.cli._app import UsageProblem, exit_with, main, parse_json_object, run_async
from saga_fsm.cli._params import count
from saga_fsm.stores import open_store


@contextlib.contextmanager
def _scratch_storage() -> Iterator[None]:
    """Hypothesis caches things in ``./.hypothesis``; a command run anywhere should not
    leave that behind (unless HYPOTHESIS_STORAGE_DIRECTORY says where it goes)."""
    if os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        yield
        return
    from hypothesis.configuration import set_hypothesis_home_dir

    with tempfile.TemporaryDirectory(prefix="saga_fsm_check_") as scratch:
        set_hypothesis_home_dir(scratch)
        try:
            yield
        finally:
            set_hypothesis_home_dir(None)


async def _probe(url: str) -> None:
    """Open and close the store once: a bad URL is bad input (exit 2), not a failed
    example."""
    async with open_store(url):
        pass


def _invariants(ref: str) -> list[Any]:
    """``module:attr`` (one invariant, or a list/tuple of them) or ``module`` (every
    ``@saga_invariant`` in it, in definition order)."""
    from saga_fsm.testing import Invariant

    if ":" in ref:
        value = resolve_reference(ref)
        found = list(value) if isinstance(value, list | tuple) else [value]
    else:
        try:
            module = importlib.import_module(ref)
        except ImportError as err:
            raise UsageProblem(f"--invariants: cannot import module {ref!r}: {err}") from None
        found = [v for v in vars(module).values() if isinstance(v, Invariant)]
        if not found:
            raise UsageProblem(f"--invariants: module {ref!r} has no @saga_invariant functions")
    for value in found:
        if not callable(value):
            raise UsageProblem(f"--invariants: {ref!r} holds {value!r}, not an invariant")
    return found


def _participant(ref: str) -> Any:
    from saga_fsm.participant import Participant

    try:
        value = resolve_reference(ref)
    except SagaError as err:
        raise UsageProblem(f"--participant: {err}") from None
    if not isinstance(value, Participant):
        raise UsageProblem(f"--participant: {ref!r} holds {value!r}, not a Participant")
    return value


def _testing_check() -> Any:
    """``saga_fsm.testing.check``, or one line naming the extra that installs it."""
    try:
        from saga_fsm.testing import check
    except ImportError as err:
        raise UsageProblem(str(err)) from None
    return check


@main.command("check")
@click.argument("ref")
@click.option(
    "--invariants",
    "invariant_refs",
    multiple=True,
    metavar="REF",
    help="Your invariants: package.module:attribute (one, or a list) or package.module"
    " (every @saga_invariant in it). Repeatable.",
)
@click.option("--max-examples", type=count(), default=100, show_default=True)
@click.option("--seed", type=int, default=None, help="Replay a run (default: random, printed).")
@click.option(
    "--data",
    "data_items",
    multiple=True,
    metavar="JSON",
    help="Initial saga data, a JSON object. Repeatable: each saga starts with one of them"
    " (say, an amount below and one above an approval threshold).",
)
@click.option(
    "--setup",
    "setup_ref",
    default=None,
    metavar="REF",
    help="package.module:function building a fresh world (fakes) for every example.",
)
@click.option(
    "--steps",
    type=count(),
    default=30,
    show_default=True,
    help="Events per example.",
)
@click.option(
    "--sagas",
    type=click.IntRange(min=1, max=16),
    default=1,
    show_default=True,
    help="Sagas live at once.",
)
@click.option(
    "--store",
    "store_url",
    default="memory://",
    show_default=True,
    metavar="URL",
    help="Where the sagas under test are persisted.",
)
@click.option(
    "--participant",
    "participant_refs",
    multiple=True,
    metavar="REF",
    help="package.module:attribute of a Participant answering remote steps with its real"
    " handlers (others are answered by an ideal participant). Repeatable.",
)
def check_command(
    ref: str,
    invariant_refs: tuple[str, ...],
    max_examples: int,
    seed: int | None,
    data_items: tuple[str, ...],
    setup_ref: str | None,
    steps: int,
    sagas: int,
    store_url: str,
    participant_refs: tuple[str, ...],
) -> None:
    """Explore every path of the saga REF and check its invariants.

    REF is a definition file, package.module:attribute, or a module holding exactly
    one definition; or a choreography (file or reference), explored with its events
    lost, duplicated, reordered and late through the real tracker (--sagas: instances
    at once). Exits 0 when every property holds, 1 with a counterexample.
    """
    check = _testing_check()
    from saga_fsm.choreography._diagram import choreography_at

    choreography = choreography_at(ref)
    if choreography is not None:
        given = {
            "--invariants": bool(invariant_refs),
            "--data": bool(data_items),
            "--setup": setup_ref is not None,
            "--store": store_url != "memory://",
        }
        for option, used in given.items():
            if used:
                raise UsageProblem(
                    f"{option} does not apply to a choreography (its tracker is explored"
                    " on a memory store)"
                )
        with _scratch_storage():
            report = check(
                choreography, instances=sagas, max_examples=max_examples, steps=steps, seed=seed
            )
        click.echo(report.format())
        exit_with(0 if report.ok else 1)
    definition = load_definition(ref)
    run_async(lambda: _probe(store_url))
    invariants = [i for r in invariant_refs for i in _invariants(r)]
    payloads = [parse_json_object(item, "--data") for item in data_items]
    payload: Any = payloads[0] if len(payloads) == 1 else None
    if len(payloads) > 1:
        from hypothesis import strategies as st

        payload = st.sampled_from(payloads)
    setup = resolve_reference(setup_ref) if setup_ref is not None else None
    if setup is not None and not callable(setup):
        raise UsageProblem(f"--setup: {setup_ref!r} is not callable")
    participants = [_participant(r) for r in participant_refs]
    with _scratch_storage():
        report = check(
            definition,
            participants=participants,
            invariants=invariants,
            data=payload,
            setup=setup,
            store=store_url,
            sagas=sagas,
            max_examples=max_examples,
            steps=steps,
            seed=seed,
        )
    click.echo(report.format())
    exit_with(0 if report.ok else 1)
