"""The operator console: ``saga-fsm ui`` serves it (``pip install 'saga-fsm[ui]'``).

A server-rendered web app (Starlette, Jinja2, uvicorn; no build step, nothing from a
CDN): an overview of the store, the list of sagas with filters in the URL, one page per
saga with its path drawn on its definition's Machine, the operator commands (and
un-quarantine) behind a confirmation, a broker's dead letters with replay and drop, and
the definitions the console was given.
"""

from saga_fsm.console._app import create_app
from saga_fsm.console._security import is_loopback

__all__ = ["create_app", "is_loopback"]
