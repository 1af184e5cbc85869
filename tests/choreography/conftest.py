"""Choreography tests run on the messaging tests' brokers (see tests/messaging/_brokers.py)."""

from tests.messaging.conftest import broker

__all__ = ["broker"]
