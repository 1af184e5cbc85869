"""The remote order saga for the kill test's worker processes: its channels carry the
test's prefix (``SAGA_FSM_TEST_PREFIX``) and its steps time out after
``SAGA_FSM_TEST_TIMEOUT`` seconds (5 by default)."""

from __future__ import annotations

import os

from saga_fsm.examples.order_remote import remote_definition

definition = remote_definition(
    os.environ.get("SAGA_FSM_TEST_PREFIX", "kill"),
    timeout=float(os.environ.get("SAGA_FSM_TEST_TIMEOUT", "5.0")),
)
