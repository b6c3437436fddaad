"""A stand-in for a payment gateway, with switches that simulate a bad day: calls that fail with
HTTP 503 and cards that are declined.

Like real gateways, ``charge`` takes an idempotency key and returns the same charge reference for the
same key, so a step that is retried after a crash never charges a customer twice.

The failures are scripted by call number, not drawn at random, so the demo tells the same story
every time it runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


class GatewayUnavailable(Exception):  # noqa: N818 - named like the HTTP status it stands for
    """The payment gateway did not answer (HTTP 503): worth trying again a little later."""


class CardDeclined(Exception):  # noqa: N818 - named like the gateway's answer
    """The customer's bank declined the charge: trying again gives the same answer."""


@dataclass
class _Trouble:
    unavailable_calls: frozenset[int] = frozenset()
    declined: frozenset[str] = frozenset()
    calls: int = 0


_trouble: _Trouble | None = None


@contextmanager
def trouble(
    *, unavailable_calls: Collection[int] = (), declined: Collection[str] = ()
) -> Iterator[None]:
    """Within the block, the calls numbered in ``unavailable_calls`` (1 is the block's first call)
    fail with :class:`GatewayUnavailable`, and charges to the ``declined`` customers raise
    :class:`CardDeclined`."""
    global _trouble
    _trouble = _Trouble(frozenset(unavailable_calls), frozenset(declined))
    try:
        yield
    finally:
        _trouble = None


def charge(*, customer: str, amount_cents: int, idempotency_key: str) -> str:
    """Charge ``customer`` and return the charge reference, or raise :class:`GatewayUnavailable` or
    :class:`CardDeclined`."""
    if _trouble is not None:
        _trouble.calls += 1
        if _trouble.calls in _trouble.unavailable_calls:
            raise GatewayUnavailable(
                f"payment gateway unavailable (HTTP 503) while charging {customer}"
            )
        if customer in _trouble.declined:
            raise CardDeclined(f"the card of {customer} was declined (insufficient funds)")
    digest = hashlib.sha256(f"{idempotency_key}:{customer}:{amount_cents}".encode()).hexdigest()
    return f"ch_{digest[:16]}"
