"""Directed paths: planned sequences of moves, run with the real actions and every
invariant exactly like a random example.

Two uses. Random exploration finds combinations nobody thought of but is weak at rows
that need a precise sequence (three timeouts in a row, a cancel exactly while a step
is in flight): the reachability search knows a shortest sequence for each row, so a
check ends by taking those, and coverage is complete unless the user's own code steers
a path elsewhere (the report then shows the row as missed). And a counterexample
is replayed with the broken saga alone and minimised move by move (see ``minimise``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hypothesis
from attrs import define
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from saga_fsm.testing._driver import Driver, DriverConfig
from saga_fsm.testing._faults import Fault
from saga_fsm.testing._fixtures import make_data
from saga_fsm.testing._invariants import InvariantViolation
from saga_fsm.testing._machine import MachineConfig, RunStats
from saga_fsm.testing._reachability import Move, reachability, static_data
from saga_fsm.testing._trace import TraceEntry, render_path


@define
class DirectedResult:
    runs: int = 0
    error: Exception | None = None
    path: str = ""
    moves: tuple[Move, ...] = ()


def moves_of(trace: Iterable[TraceEntry]) -> tuple[Move, ...]:
    """The moves that made a trace, to replay it."""
    moves: list[Move] = []
    for entry in trace:
        if entry.late:
            continue  # a delayed message arriving: part of the move that came before
        if entry.kind in ("cancel", "retry"):
            moves.append((entry.kind, Fault.OK))
        elif entry.is_call and entry.step is not None and "/" in entry.step:
            moves.append(("call", entry.fault or Fault.OK, entry.step))  # a branch's call
        elif entry.kind == "signal":
            moves.append((f"signal:{entry.label}", Fault.OK))
        elif entry.kind == "deadline":
            moves.append(("call", Fault.OK))
        elif entry.is_call:
            moves.append(("call", entry.fault or Fault.OK))
        else:
            moves.append(("tick", Fault.OK))
    return tuple(moves)


def play(
    config: DriverConfig, data: Any, moves: Iterable[Move], stats: RunStats | None = None
) -> tuple[Exception | None, str]:
    """One saga in a fresh world: the moves, then fault-free to the end, checking every
    invariant after each move. ``data`` is a mapping, or the data source to make it."""
    driver = Driver(config)
    try:
        saga = driver.create(make_data(data, driver.world, _no_draw))
        for move in moves:
            driver.play(saga, move)
            driver.check(final=False)
        driver.finish_all()
        driver.check(final=True)
    except Exception as err:
        return err, render_path(driver.sagas[0].trace) if driver.sagas else ""
    finally:
        if stats is not None:
            stats.record(driver)
        driver.close()
    return None, render_path(saga.trace)


def _strategy_data(strategy: SearchStrategy[Any]) -> dict[str, Any]:
    """One simple value of the user's data strategy, drawn the supported way."""
    drawn: list[dict[str, Any]] = []

    @hypothesis.settings(
        max_examples=1,
        database=None,
        deadline=None,
        phases=(Phase.generate,),
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(st.data())
    def draw(data: st.DataObject) -> None:
        drawn.append(make_data(strategy, None, data.draw))

    draw()
    return drawn[0]


def run_directed(config: MachineConfig, stats: RunStats) -> DirectedResult:
    """Take a shortest path to each reachable row ``stats`` has not seen yet."""
    driver = config.driver
    found = reachability(
        driver.definition, driver.faults, config.operator_retry, static_data(config.data)
    )
    data = _strategy_data(config.data) if isinstance(config.data, SearchStrategy) else config.data
    result = DirectedResult()
    for row in sorted(found.rows):
        moves = found.paths.get(row)
        if row in stats.coverage.taken or moves is None:
            continue
        result.runs += 1
        error, path = play(driver, data, moves, stats)
        if error is not None:
            result.error, result.path, result.moves = error, path, moves
            return result
    return result


def minimise(
    config: DriverConfig,
    violation: InvariantViolation,
    trace: tuple[TraceEntry, ...],
    data: Any,
    budget: int = 300,
) -> tuple[InvariantViolation, str, int] | None:
    """Replay the broken saga on its own (any other saga of the example dropped), then
    look for a shorter story that breaks the same invariant: a move left out, two
    moves merged into one call with some fault, a fault made simpler. Hypothesis
    shrinks the example; this finishes the job on the saga itself, where dropping one
    move changes which call the next one hits. Returns the violation, its path and
    the number of replays, or None when even the first replay does not break it."""
    replays = 0

    def attempt(moves: tuple[Move, ...]) -> tuple[InvariantViolation, str] | None:
        nonlocal replays
        replays += 1
        error, path = play(config, data, moves)
        if isinstance(error, InvariantViolation) and error.invariant == violation.invariant:
            return error, path
        return None

    moves = moves_of(trace)
    best = attempt(moves)
    if best is None:
        return None
    score = _score(best[1], moves)
    tried = {moves}
    improved = True
    while improved and replays < budget:
        improved = False
        for candidate in _simpler(moves):
            if candidate in tried:
                continue
            if replays >= budget:
                break
            tried.add(candidate)
            found = attempt(candidate)
            if found is not None and _score(found[1], candidate) < score:
                moves, best, score, improved = candidate, found, _score(found[1], candidate), True
                break
    return best[0], best[1], replays


def _score(path: str, moves: tuple[Move, ...]) -> tuple[int, int, int]:
    """Shorter told story first, then fewer moves, then plainer faults."""
    faults = list(Fault)
    return len(path.split(" -> ")), len(moves), sum(faults.index(m[1]) for m in moves)


def _simpler(moves: tuple[Move, ...]) -> Iterable[tuple[Move, ...]]:
    """Candidate simplifications of a move sequence, most promising first: halves,
    quarters, ... left out, then single moves, merged pairs, plainer faults."""
    size = len(moves) // 2
    while size >= 2:
        for start in range(len(moves) - size, -1, -size):
            yield moves[:start] + moves[start + size :]
        size //= 2
    for i in reversed(range(len(moves))):
        yield moves[:i] + moves[i + 1 :]
        if i + 1 < len(moves) and moves[i + 1][0] == "tick":
            yield moves[:i] + moves[i + 2 :]
    for i in reversed(range(len(moves) - 1)):
        for fault in Fault:
            yield (*moves[:i], ("call", fault), *moves[i + 2 :])
    for i in reversed(range(len(moves))):
        kind, fault, *which = moves[i]
        for simpler in list(Fault)[: list(Fault).index(fault)]:
            plainer: Move = (kind, simpler, *which)  # type: ignore[assignment]
            yield (*moves[:i], plainer, *moves[i + 1 :])


def _no_draw(strategy: SearchStrategy[Any]) -> Any:
    raise AssertionError("strategies are drawn before a directed path runs")
