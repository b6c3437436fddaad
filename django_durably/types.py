"""Type aliases shared across the package. A leaf module."""

from __future__ import annotations

from typing import Literal, TypeAlias

JSON: TypeAlias = dict[str, "JSON"] | list["JSON"] | str | int | float | bool | None
"""A value that round-trips through JSON unchanged."""

Disposition: TypeAlias = Literal["created", "idempotent", "coalesced"]
"""What a trigger did: made a new run, found one by idempotency key, or joined a pending one."""

Coalesce: TypeAlias = Literal["error", "skip"]
"""What a trigger does when a pending run has the same concurrency key: raise, or return that run."""

LogLevel: TypeAlias = Literal["info", "warning", "error"]
