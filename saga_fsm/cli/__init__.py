"""The ``saga-fsm`` command line."""

from saga_fsm.cli._app import main

__all__ = ["main"]
