"""Errors of the diagram layer, under the package-wide ``SagaError`` root, so the CLI
reports them as one line and callers can catch everything saga_fsm raises at once."""

from __future__ import annotations

from saga_fsm._errors import SagaError


class DiagramError(SagaError):
    """A diagram cannot be drawn: an unknown format, or a history that does not fit the
    definition it is drawn on."""


class RendererNotFound(DiagramError):
    """Neither Graphviz's ``dot`` nor ``graphviz-pure`` could be found to draw an image."""
