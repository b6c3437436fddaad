"""A stand-in for a payment gateway, with a switch that simulates an outage.

Like real gateways, ``charge`` takes an idempotency key and returns the same charge reference for the
same key, so a step that is retried after a crash never charges a customer twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager


class GatewayUnavailable(Exception):  # noqa: N818 - named like the HTTP status it stands for
    """The payment gateway did not answer (HTTP 503)."""


_state: dict[str, int | None] = {"charges_left": None}


@contextmanager
def outage(*, after_charges: int) -> Iterator[None]:
    """Within the block, the gateway accepts ``after_charges`` charges, then fails every call."""
    _state["charges_left"] = after_charges
    try:
        yield
    finally:
        _state["charges_left"] = None


def charge(*, customer: str, amount_cents: int, idempotency_key: str) -> str:
    """Charge ``customer`` and return the charge reference, or raise :class:`GatewayUnavailable`."""
    left = _state["charges_left"]
    if left is not None:
        if left <= 0:
            raise GatewayUnavailable(
                f"payment gateway unavailable (HTTP 503) while charging {customer}"
            )
        _state["charges_left"] = left - 1
    digest = hashlib.sha256(f"{idempotency_key}:{customer}:{amount_cents}".encode()).hexdigest()
    return f"ch_{digest[:16]}"
