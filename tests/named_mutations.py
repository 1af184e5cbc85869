"""Break the engine on purpose, one named way at a time, and show which tests notice.

    python -m tests.named_mutations [NAME ...] [-- PYTEST ARGS]

PYTEST ARGS, when given, replace each mutation's own test selection (for example
``-- tests/test_engine_order.py -m "not slow"``).

Each mutation below is a text edit of the package that breaks one guarantee the README
states. For each, the package and the tests are copied to a temporary directory, the
edit is applied there (the working tree is never touched), the mutation's tests are
run against the copy, and the failing ones are listed. A mutation no test notices is a
hole in the suite: the script exits 1. Not run in CI (it runs pytest once per mutation);
see the README's development notes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[1]


@attrs.frozen
class Mutation:
    name: str
    why: str
    edits: tuple[tuple[str, str, str], ...]  # (file, text, replacement): every occurrence
    tests: tuple[str, ...]


HOLD_BACK = """            decided = self._leased(decision.snapshot, release=release)
            try:
                saved = await self.store.save("""
HOLD_BACK_MUTANT = """            decided = self._leased(decision.snapshot, release=release)
            held = getattr(self, "_held", ())
            if event.name == "step_succeeded" and not release:
                self._held = held + decision.history  # saved with the next write instead
                return replace(decided, version=snapshot.version), decision.commands
            self._held, decision = (), attrs.evolve(decision, history=held + decision.history)
            try:
                saved = await self.store.save("""

MUTATIONS = (
    Mutation(
        "hold-back-result-save",
        "a step's success is saved only with the next write, after the next action ran",
        (
            ("saga_fsm/_orchestrator.py", HOLD_BACK, HOLD_BACK_MUTANT),
            ("saga_fsm/_orchestrator.py", "import asyncio\n", "import asyncio\n\nimport attrs\n"),
        ),
        ("tests/test_engine_order.py", "tests/durability/test_faults.py"),
    ),
    Mutation(
        "takeover-without-version-bump",
        "claiming or acquiring a saga leaves its version as it was",
        tuple(
            (f"saga_fsm/stores/{store}.py", "bump=True", "bump=False")
            for store in ("memory", "sqlite", "postgres")
        ),
        (
            "tests/test_engine_order.py",
            "tests/stores/test_contract.py",
            "tests/test_worker.py",
            "tests/durability/test_faults.py",
        ),
    ),
    Mutation(
        "ignore-lost-lease",
        "a worker whose write was refused carries on when another worker holds the lease",
        (
            (
                "saga_fsm/_orchestrator.py",
                "raise _LeaseLost(snapshot) from None",
                "pass  # mutant",
            ),
        ),
        ("tests/test_engine_order.py", "tests/test_worker.py", "tests/durability/test_faults.py"),
    ),
    Mutation(
        "compensate-in-wrong-order",
        "compensation starts from the first compensable step instead of the last",
        (("saga_fsm/_flow.py", "for j in range(last, -1, -1):", "for j in range(last + 1):"),),
        (
            "tests/test_engine_order.py",
            "tests/core",
            "tests/stateful",
            "tests/durability/test_faults.py",
        ),
    ),
)


def mutate(copy: Path, mutation: Mutation) -> None:
    for file, text, replacement in mutation.edits:
        path = copy / file
        source = path.read_text()
        if text not in source:
            raise SystemExit(f"{mutation.name}: {file} no longer contains {text!r}: update it")
        path.write_text(source.replace(text, replacement))


def run(mutation: Mutation, pytest_args: list[str]) -> list[str]:
    """The node ids of the tests that fail under ``mutation``."""
    with tempfile.TemporaryDirectory(prefix="saga_fsm_mutant_") as tmp:
        copy = Path(tmp)
        for part in ("saga_fsm", "tests", "pyproject.toml", "README.md"):
            source = ROOT / part
            if source.is_dir():
                shutil.copytree(source, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(source, copy / part)
        mutate(copy, mutation)
        env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
        done = subprocess.run(
            [
                *(sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider"),
                *(pytest_args or mutation.tests),
            ],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
        )
        return sorted(set(re.findall(r"^FAILED (\S+)", done.stdout, re.MULTILINE)))


def main(argv: list[str]) -> int:
    names, _, pytest_args = (
        (argv[: argv.index("--")], "--", argv[argv.index("--") + 1 :])
        if "--" in argv
        else (argv, "", [])
    )
    chosen = [m for m in MUTATIONS if not names or m.name in names]
    unknown = set(names) - {m.name for m in MUTATIONS}
    if unknown:
        print(f"unknown mutation(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    survived = []
    for mutation in chosen:
        failed = run(mutation, pytest_args)
        print(f"{mutation.name}: {mutation.why}")
        print(f"  killed by {len(failed)} test(s)" if failed else "  SURVIVED")
        for test in failed:
            print(f"    {test}")
        if not failed:
            survived.append(mutation.name)
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
