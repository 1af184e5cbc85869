"""The lock of released definitions, for a test suite (``saga-fsm check-definitions``
writes the file)."""

from __future__ import annotations

from saga_fsm._versions import assert_definitions_locked

__all__ = ["assert_definitions_locked"]
