"""Mutation scores of the engine's modules, each against the fast tests that guard it.

    python -m tests.mutation_scores [MODULE ...] [--max-children N] [--keep DIR]

For each module, mutmut (``pip install -e '.[test]'`` installs it) runs in a copy of the
project in a temporary directory, mutating that module alone and running only the tests
listed for it below (the slow subprocess and fault tests would take days over hundreds
of mutants). It prints one JSON line per module (killed, survived, timeouts, score) and
the names of the surviving mutants; ``mutmut show NAME`` in the kept directory shows one.
Not run in CI: on two cores the whole set takes hours. See the README's development notes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_EMBEDDED = ["-m", "not postgres"]  # the engine's own logic: memory and SQLite suffice
_CORE = ["tests/core", "tests/test_orchestrator.py", "tests/test_engine_order.py", *_EMBEDDED]
_TABLES = [
    *("tests/diagrams", "tests/testing"),
    *("--ignore=tests/diagrams/test_cli.py", "--ignore=tests/diagrams/test_notebooks.py"),
]
_ENGINE = [
    *("tests/test_orchestrator.py", "tests/test_worker.py", "tests/test_engine_order.py"),
    *_EMBEDDED,
]
_STORE = ["tests/stores/test_contract.py", "tests/test_engine_order.py"]

# module -> the tests that guard it (pytest arguments)
MODULES: dict[str, list[str]] = {
    "saga_fsm/_core.py": _CORE,
    # The tables feed the diagrams and saga_fsm.testing's coverage as well.
    "saga_fsm/_flow.py": [*_CORE, *_TABLES],
    "saga_fsm/_lifecycle.py": [*_CORE, *_TABLES],
    "saga_fsm/_orchestrator.py": _ENGINE,
    "saga_fsm/_worker.py": _ENGINE,
    "saga_fsm/stores/memory.py": [*_STORE, "-k", "memory"],
    "saga_fsm/stores/sqlite.py": [*_STORE, "tests/stores/test_sqlite.py", "-k", "sqlite"],
    "saga_fsm/stores/postgres.py": [*_STORE, "tests/stores/test_postgres.py", "-k", "postgres"],
}


def config(module: str, tests: list[str]) -> str:
    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["saga_fsm"]\n'
        'also_copy = ["diagrams", "README.md"]\n'
        f"only_mutate = [{json.dumps(module)}]\n"
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q"]\n'
    )


def score(module: str, max_children: int, keep: Path | None) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="saga_fsm_mutmut_", dir=keep))
    try:
        for part in ("saga_fsm", "tests", "diagrams"):  # the diagram tests compare to diagrams/
            shutil.copytree(ROOT / part, work / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "README.md", work)  # a test runs the README's example
        pyproject = (ROOT / "pyproject.toml").read_text()
        (work / "pyproject.toml").write_text(pyproject + config(module, MODULES[module]))
        mutmut = [sys.executable, "-m", "mutmut"]
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        subprocess.run(
            [*mutmut, "run", "--max-children", str(max_children)],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            check=False,
        )
        subprocess.run([*mutmut, "export-cicd-stats"], cwd=work, env=env, capture_output=True)
        stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
        listed = subprocess.run(
            [*mutmut, "results"], cwd=work, env=env, capture_output=True, text=True
        ).stdout
        survivors = [
            line.split(":")[0].strip() for line in listed.splitlines() if "survived" in line
        ]
        tested = stats["killed"] + stats["survived"] + stats["timeout"] + stats["suspicious"]
        killed = stats["killed"] + stats["timeout"]  # a mutant that hangs the tests is caught
        if stats["total"] and not tested:
            stats["error"] = "mutmut ran no mutant: run it in a --keep directory to see why"
        return {
            "module": module,
            **stats,
            "score": round(100 * killed / tested, 1) if tested else None,
            "survivors": survivors,
            "workdir": str(work) if keep else None,
        }
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation_scores")
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=", ".join(MODULES))
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep each module's mutmut directory here")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.modules) - set(MODULES))
    if unknown:
        parser.error(f"not a module with a test selection: {', '.join(unknown)}")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    for module in args.modules or MODULES:
        print(json.dumps(score(module, args.max_children, args.keep)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
