"""Choreographed sagas: a state table of events, participants that react to events and
publish their own, and a tracker that follows every instance from its events alone."""

from saga_fsm.choreography._definition import (
    COMPENSATED,
    COMPLETED,
    PENDING,
    TRACKER,
    Choreography,
    Event,
    Expectation,
    Failure,
    Move,
    expect,
)
from saga_fsm.choreography._events import channel, event_messages
from saga_fsm.choreography._loading import choreography_from_mapping, load_choreography
from saga_fsm.choreography._participant import (
    EventContext,
    EventHandler,
    EventParticipant,
    publish_event,
)
from saga_fsm.choreography._track import (
    Anomaly,
    Decision,
    Instance,
    Observed,
    PublishCompensation,
    deadline,
    expire,
    machine,
    track,
)
from saga_fsm.choreography._tracker import Tracker, Unknown

__all__ = [
    "COMPENSATED",
    "COMPLETED",
    "PENDING",
    "TRACKER",
    "Anomaly",
    "Choreography",
    "Decision",
    "Event",
    "EventContext",
    "EventHandler",
    "EventParticipant",
    "Expectation",
    "Failure",
    "Instance",
    "Move",
    "Observed",
    "PublishCompensation",
    "Tracker",
    "Unknown",
    "channel",
    "choreography_from_mapping",
    "deadline",
    "event_messages",
    "expect",
    "expire",
    "load_choreography",
    "machine",
    "publish_event",
    "track",
]
