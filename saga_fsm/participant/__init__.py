"""The participant SDK: a service's handlers for saga commands, behind an idempotent
inbox with the suspension guard, on any ``saga_fsm.messaging`` transport."""

from saga_fsm.participant._inbox import (
    Inbox,
    InboxRecord,
    InboxTransaction,
    MemoryInbox,
    PostgresInbox,
    SqliteInbox,
)
from saga_fsm.participant._participant import Command, Handler, Participant

__all__ = [
    "Command",
    "Handler",
    "Inbox",
    "InboxRecord",
    "InboxTransaction",
    "MemoryInbox",
    "Participant",
    "PostgresInbox",
    "SqliteInbox",
]
