"""The run list's cursor pagination: runs newest first (ties broken by id), a page at a time.

A cursor is an opaque position after a run in the order (-created_at, -id): the run's creation time
and id as compact JSON in URL-safe base64 without padding. A cursor that this API did not make is an
:class:`~django_durably.exceptions.InvalidQuery` (a 422), never a 500. Unlike an offset, a cursor
neither skips nor repeats runs when new ones are triggered between two pages.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from uuid import UUID

from django.db.models import Q, Subquery, Value
from django.db.models.functions import Coalesce

from django_durably.exceptions import InvalidQuery
from django_durably.models import Run, RunQuerySet

__all__ = ["MAX_CURSOR_LENGTH", "Position", "decode_cursor", "encode_cursor", "page"]

MAX_CURSOR_LENGTH = 200
ORDER = ("-created_at", "-pk")

Position = tuple[datetime, UUID]
"""Where a cursor points: the creation time and id of the last run of the previous page."""


def encode_cursor(run: Run) -> str:
    """An opaque position after ``run`` in the newest-first order."""
    raw = json.dumps([run.created_at.isoformat(), run.pk.hex], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position a cursor of :func:`encode_cursor` points at, or :class:`InvalidQuery`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, run_id = json.loads(raw)
        if not isinstance(created, str) or not isinstance(run_id, str):
            raise TypeError("not a cursor")
        created_at = datetime.fromisoformat(created)
        if created_at.tzinfo is None:
            raise TypeError("not a cursor")
        return created_at.astimezone(UTC), UUID(run_id)
    except (ValueError, TypeError, OverflowError):  # binascii.Error is a ValueError
        raise InvalidQuery("Not a cursor from this API.", field="cursor") from None


def page(runs: RunQuerySet, after: Position | None, limit: int) -> tuple[list[Run], str | None]:
    """Up to ``limit`` of ``runs`` after the position ``after`` (from the first without it), and
    the cursor of the next page (``None`` on the last)."""
    if after is not None:
        runs = _after(runs, *after)
    found = list(runs.order_by(*ORDER)[: limit + 1])
    items = found[:limit]
    return items, encode_cursor(items[-1]) if len(found) > limit else None


def _after(runs: RunQuerySet, created_at: datetime, run_id: UUID) -> RunQuerySet:
    """Runs after the cursor's run in the order (-created_at, -id).

    The cursor run's ``created_at`` is compared as stored (a subquery), not as a parameter:
    SQLite stores database-clock times with millisecond text that a Python datetime parameter does
    not compare equal to. The cursor's own timestamp is the fallback once that run is deleted.
    """
    pivot = Coalesce(
        Subquery(Run.objects.using(runs.db).filter(pk=run_id).values("created_at")[:1]),
        Value(created_at),
    )
    return runs.filter(Q(created_at__lt=pivot) | Q(created_at=pivot, pk__lt=run_id))
