"""check-definitions, ls --unrunnable and migrate, as an operator uses them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from saga_fsm import Orchestrator, definition_fingerprint, open_store
from tests import versioned_sagas
from tests.cli.test_operate import cli
from tests.versioned_sagas import order_v1, order_v1_edited, order_v2

V1 = "tests.versioned_sagas:order_v1"
V1_EDITED = "tests.versioned_sagas:order_v1_edited"
V2 = "tests.versioned_sagas:order_v2"


def test_check_definitions_writes_the_lock_then_fails_on_a_changed_released_version(
    tmp_path: Path,
) -> None:
    lock = tmp_path / "saga_definitions.lock"
    wrote = cli(tmp_path, "check-definitions", V1)
    assert (wrote.returncode, wrote.stdout) == (0, "wrote saga_definitions.lock: 1 definition(s)\n")
    locked = json.loads(lock.read_text())
    assert locked == {
        "format": 1,
        "definitions": [
            {"name": "order", "version": 1, "fingerprint": definition_fingerprint(order_v1)}
        ],
    }
    added = cli(tmp_path, "check-definitions", V1, V2, "--lock", str(lock))
    assert added.returncode == 0, added.stderr
    assert f"added order version 2: {definition_fingerprint(order_v2)}" in added.stdout
    changed = cli(tmp_path, "check-definitions", V1_EDITED, V2)
    assert changed.returncode == 1
    assert changed.stdout.splitlines() == [
        f"order version 1: fingerprint {definition_fingerprint(order_v1)} is now"
        f" {definition_fingerprint(order_v1_edited)} (a released version changed: bump its"
        " version, or run with --update)"
    ]
    assert "1 released definition(s) changed" in changed.stderr
    assert json.loads(lock.read_text())["definitions"][0]["fingerprint"] == (
        definition_fingerprint(order_v1)
    )
    updated = cli(tmp_path, "check-definitions", V1_EDITED, "--update")
    assert updated.returncode == 0, updated.stderr
    assert updated.stdout.startswith("updated order version 1: ")
    assert cli(tmp_path, "check-definitions", V1_EDITED, V2).returncode == 0
    lock.write_text("not json")
    broken = cli(tmp_path, "check-definitions", V1)
    assert broken.returncode == 2
    assert "is not a saga definitions lock file" in broken.stderr


def _setup(tmp_path: Path) -> dict[str, str]:
    """A version 1 saga parked in failed, a pending version 1 saga and a pending version
    2 saga, in the store the CLI uses."""

    async def go() -> dict[str, str]:
        async with open_store(f"sqlite:///{tmp_path}/ops.db") as store:
            orchestrator = Orchestrator(store, [order_v1, order_v2])
            versioned_sagas.BROKEN["release"] = True
            try:
                parked = await orchestrator.run("order", {"decline": True}, version=1)
            finally:
                versioned_sagas.BROKEN["release"] = False
            pending = await orchestrator.start("order", {}, version=1)
            newest = await orchestrator.start("order", {})
            return {"parked": parked.saga_id, "pending": pending.saga_id, "v2": newest.saga_id}

    return asyncio.run(go())


def test_ls_unrunnable_lists_the_sagas_no_given_definition_serves(tmp_path: Path) -> None:
    ids = _setup(tmp_path)
    listed = cli(tmp_path, "ls", "--unrunnable", V2, "--json")
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    assert [(f["id"], f["state"]) for f in found] == [
        (ids["parked"], "failed"),
        (ids["pending"], "pending"),
    ]
    assert found[0]["reason"] == (
        "no definition 'order' version 1 is registered: register it with this orchestrator"
    )
    assert found[0]["definition_fingerprint"] == definition_fingerprint(order_v1)
    edited = cli(tmp_path, "ls", "--unrunnable", V1_EDITED, V2)
    assert edited.returncode == 0, edited.stderr
    assert "changed without a version bump" in edited.stdout
    assert "2 unrunnable saga(s)" in edited.stdout
    assert json.loads(cli(tmp_path, "ls", "--unrunnable", V1, V2, "--json").stdout) == []
    bare = cli(tmp_path, "ls", "--unrunnable")
    assert bare.returncode == 2 and "takes the definitions" in bare.stderr


def test_migrate_is_refused_whole_then_moves_with_a_state_mapping(tmp_path: Path) -> None:
    ids = _setup(tmp_path)
    refused = cli(tmp_path, "migrate", "order", "--from", "1", "--to", "2", V2)
    assert refused.returncode == 1
    assert refused.stdout.splitlines() == [
        f"refused {ids['parked']}: step 'charge' is failed and version 2 has no step"
        " 'charge': map it with --state running:charge=running:STEP"
    ]
    assert "nothing was changed" in refused.stderr
    unmoved = cli(tmp_path, "show", ids["pending"], "--json")
    assert json.loads(unmoved.stdout)["definition_version"] == 1
    bad = cli(tmp_path, "migrate", "order", "--from", "1", "--to", "2", "--state", "x", V2)
    assert bad.returncode == 2 and "expected OLD=NEW" in bad.stderr
    moved = cli(
        tmp_path,
        "migrate",
        "order",
        "--from",
        "1",
        "--to",
        "2",
        "--state",
        "running:charge=running:charge_card",
        "--ids",
        ids["parked"][:8],
        V2,
    )
    assert moved.returncode == 0, moved.stderr
    table = definition_fingerprint(order_v2)[:12]
    assert moved.stdout.splitlines() == [
        f"moved {ids['parked']} to order v2 (table {table}): failed",
        "1 saga(s) moved, 0 left",
    ]
    history = json.loads(cli(tmp_path, "history", ids["parked"], "--json").stdout)
    last = history["transitions"][-1]
    assert (last["trigger"], last["detail"]["steps"]) == ("migrate", {"charge": "charge_card"})
    rest = cli(tmp_path, "migrate", "order", "--from", "1", "--to", "2", V1, V2, "--json")
    assert rest.returncode == 0, rest.stderr
    assert json.loads(rest.stdout) == {
        "migrated": [{"id": ids["pending"], "state": "pending", "version": 2}],
        "left": [],
    }
    assert json.loads(cli(tmp_path, "ls", "--unrunnable", V2, "--json").stdout) == []
