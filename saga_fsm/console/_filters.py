"""The list's filters as URL query parameters, so a filtered view is a link to share.

One row of ``URL_FILTERS`` per filter: its parameter, its label, the ``SagaFilter``
field it sets and how its text is read. A new filter is a new ``SagaFilter`` field and
a new row here; the form, the URL and the links all follow from the table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from attrs import frozen

from saga_fsm.stores import SagaFilter


class BadFilter(ValueError):
    """A query parameter that cannot be read: one line saying which and why."""


def _text(value: str, now: datetime) -> str:
    return value


def _time(value: str, now: datetime) -> datetime:
    """ISO 8601 (an ``<input type=datetime-local>`` sends ``2024-05-01T12:00``); UTC
    unless it says otherwise."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("not a time like 2024-05-01T12:00") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _stuck(value: str, now: datetime) -> datetime:
    """``5m``: no transition for five minutes (``s``, ``m``, ``h``, ``d``)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", value.strip())
    if match is None:
        raise ValueError("not a duration like 90s, 5m, 2h or 1d")
    return now - timedelta(seconds=float(match[1]) * _UNITS[match[2] or "s"])


def _yes_no(value: str, now: datetime) -> bool:
    """``yes``: only the quarantined sagas; ``no``: only the others."""
    answer = {"yes": True, "no": False}.get(value.lower())
    if answer is None:
        raise ValueError("not yes or no")
    return answer


@frozen
class UrlFilter:
    param: str
    label: str
    field: str
    parse: Callable[[str, datetime], object]
    placeholder: str = ""


URL_FILTERS: tuple[UrlFilter, ...] = (
    UrlFilter("state", "State", "state", _text, "compensated, running:charge"),
    UrlFilter("definition", "Definition", "definition", _text, "order_fulfillment"),
    UrlFilter("id", "Id starts with", "id_prefix", _text),
    UrlFilter("from", "Created from (UTC)", "created_from", _time, "2024-05-01T12:00"),
    UrlFilter("to", "Created before (UTC)", "created_before", _time, "2024-05-01T13:00"),
    UrlFilter("stuck", "Stuck for", "stuck_before", _stuck, "5m"),
    UrlFilter("quarantined", "Quarantined", "quarantined", _yes_no, "yes, no"),
)


@frozen
class ListView:
    """The list's filters as given (``values``, for the form and links) and as read."""

    values: dict[str, str]
    where: SagaFilter

    def url(self, **extra: str) -> str:
        return "/sagas?" + urlencode(self.values | extra) if self.values or extra else "/sagas"


def read_filters(query: Mapping[str, str], now: datetime) -> ListView:
    values: dict[str, str] = {}
    fields: dict[str, object] = {}
    for known in URL_FILTERS:
        raw = query.get(known.param, "").strip()
        if not raw:
            continue
        try:
            fields[known.field] = known.parse(raw, now)
        except ValueError as err:
            raise BadFilter(f"filter {known.param}={raw[:60]!r}: {err}") from None
        values[known.param] = raw
    return ListView(values, SagaFilter(**fields))  # type: ignore[arg-type]


def link(**params: str) -> str:
    """A link to the list with these filters (parameter names as in the URL)."""
    return "/sagas?" + urlencode(params)
