"""What a participant answers, carried in a reply message's payload.

``succeeded`` (``data`` is merged into the saga data like a local action's result),
``failed`` (``error.retryable`` False: a definite refusal that changed nothing; True:
try again), ``compensated`` (``nothing_to_undo`` when the forward step never took
effect there). The orchestrator reads replies with ``reply_from_payload``.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs
import cattrs

from saga_fsm._codec import converter
from saga_fsm._snapshot import ErrorInfo
from saga_fsm.messaging._errors import MessageDecodeError


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATED = "compensated"


@attrs.frozen
class ReplyBody:
    outcome: Outcome = attrs.field(converter=Outcome)
    data: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    nothing_to_undo: bool = False


def reply_to_payload(body: ReplyBody) -> dict[str, Any]:
    payload: dict[str, Any] = converter.unstructure(body)
    return payload


def reply_from_payload(payload: dict[str, Any], *, message_id: str | None = None) -> ReplyBody:
    try:
        return converter.structure(payload, ReplyBody)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as err:
        detail = (
            "; ".join(cattrs.transform_error(err))
            if isinstance(err, cattrs.BaseValidationError)
            else str(err)
        )
        raise MessageDecodeError(message_id, f"not a reply: {detail}") from None
