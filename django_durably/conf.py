"""Every django-durably setting and its default.

This is the only module that reads ``DURABLY_*`` keys from ``django.conf.settings``. Attributes are read
on every access, so ``override_settings`` and pytest-django's ``settings`` fixture take effect at once.
``checks`` validates the values at startup; docs/reference/settings.md documents each one.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings

DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY = 0
DEFAULT_LEASE_SECONDS = 60.0
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_WAIT_POLL_INTERVAL = 0.1
DEFAULT_JOBS_MODULE = "jobs"
DEFAULT_MAX_INPUT_BYTES = 1024 * 1024
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
DEFAULT_RETENTION_INTERVAL = 600.0
DEFAULT_API_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_API_MAX_JSON_DEPTH = 32
DEFAULT_STREAM_POLL_INTERVAL = 0.25
DEFAULT_STREAM_KEEPALIVE = 15.0
DEFAULT_STREAM_PROGRESS_INTERVAL = 0.5
DEFAULT_STREAM_MAX_SECONDS = 3600.0
DEFAULT_STREAM_MAX_PER_PROCESS = 100
DEFAULT_INLINE_RETRY_MAX_DELAY = 10.0
DEFAULT_MAX_RECLAIMS = 5
DEFAULT_MAX_ABANDONED_THREADS = 4


class DurablySettings:
    """Typed, always-fresh view of the ``DURABLY_*`` settings."""

    prefix = "DURABLY_"

    def _get(self, name: str, default: Any) -> Any:
        return getattr(django_settings, self.prefix + name, default)

    @property
    def DEFAULT_QUEUE(self) -> str:  # noqa: N802 - settings are upper case
        """Queue of jobs that do not name one."""
        return str(self._get("DEFAULT_QUEUE", DEFAULT_QUEUE))

    @property
    def DEFAULT_PRIORITY(self) -> int:  # noqa: N802
        """Priority of jobs that do not set one. Higher runs first."""
        return int(self._get("DEFAULT_PRIORITY", DEFAULT_PRIORITY))

    @property
    def LEASE_SECONDS(self) -> float:  # noqa: N802
        """How long a claim is valid without renewal."""
        return float(self._get("LEASE_SECONDS", DEFAULT_LEASE_SECONDS))

    @property
    def RENEW_INTERVAL(self) -> float:  # noqa: N802
        """Seconds between lease renewals; defaults to a third of the lease."""
        value = self._get("RENEW_INTERVAL", None)
        return self.LEASE_SECONDS / 3 if value is None else float(value)

    @property
    def POLL_INTERVAL(self) -> float:  # noqa: N802
        """Seconds an idle worker waits before looking for ready runs again."""
        return float(self._get("POLL_INTERVAL", DEFAULT_POLL_INTERVAL))

    @property
    def WAIT_POLL_INTERVAL(self) -> float:  # noqa: N802
        """Seconds between status reads in ``wait_for_run`` and ``trigger_and_wait``."""
        return float(self._get("WAIT_POLL_INTERVAL", DEFAULT_WAIT_POLL_INTERVAL))

    @property
    def JOBS_MODULE(self) -> str:  # noqa: N802
        """Module name imported from every installed app at startup to register jobs."""
        return str(self._get("JOBS_MODULE", DEFAULT_JOBS_MODULE))

    @property
    def MAX_INPUT_BYTES(self) -> int:  # noqa: N802
        """Largest accepted run input, in bytes of JSON."""
        return int(self._get("MAX_INPUT_BYTES", DEFAULT_MAX_INPUT_BYTES))

    @property
    def MAX_OUTPUT_BYTES(self) -> int:  # noqa: N802
        """Largest stored job return value or step output, in bytes of JSON."""
        return int(self._get("MAX_OUTPUT_BYTES", DEFAULT_MAX_OUTPUT_BYTES))

    @property
    def RETENTION(self) -> timedelta | None:  # noqa: N802
        """How long finished runs are kept before workers purge them (``None``: forever)."""
        value = self._get("RETENTION", None)
        if value is None or isinstance(value, timedelta):
            return value
        return timedelta(seconds=float(value))

    @property
    def RETENTION_INTERVAL(self) -> float:  # noqa: N802
        """Seconds between retention purges in each worker."""
        return float(self._get("RETENTION_INTERVAL", DEFAULT_RETENTION_INTERVAL))

    @property
    def STREAM_POLL_INTERVAL(self) -> float:  # noqa: N802
        """Seconds between database reads of a run's event stream."""
        return float(self._get("STREAM_POLL_INTERVAL", DEFAULT_STREAM_POLL_INTERVAL))

    @property
    def STREAM_KEEPALIVE(self) -> float:  # noqa: N802
        """Seconds of silence after which an event stream sends a keep-alive comment."""
        return float(self._get("STREAM_KEEPALIVE", DEFAULT_STREAM_KEEPALIVE))

    @property
    def STREAM_PROGRESS_INTERVAL(self) -> float:  # noqa: N802
        """Least seconds between two progress events of one stream (the latest value is sent)."""
        return float(self._get("STREAM_PROGRESS_INTERVAL", DEFAULT_STREAM_PROGRESS_INTERVAL))

    @property
    def STREAM_MAX_SECONDS(self) -> float:  # noqa: N802
        """Longest life of one event stream; clients reconnect and get a fresh snapshot."""
        return float(self._get("STREAM_MAX_SECONDS", DEFAULT_STREAM_MAX_SECONDS))

    @property
    def STREAM_MAX_PER_PROCESS(self) -> int:  # noqa: N802
        """Most event streams open at once in one process; more are refused with 503."""
        return int(self._get("STREAM_MAX_PER_PROCESS", DEFAULT_STREAM_MAX_PER_PROCESS))

    @property
    def API_AUTH(self) -> Any:  # noqa: N802
        """The HTTP API's ninja auth: an auth object, a dotted path to one (or to its class), or a
        list of those; ``None`` means staff-only session auth."""
        return self._get("API_AUTH", None)

    @property
    def API_SCOPE(self) -> Any:  # noqa: N802
        """Narrows what each HTTP API caller sees and may trigger: an object with ``runs()`` and
        ``check_trigger()``, or a dotted path to one (or to its class); ``None`` means no scoping."""
        return self._get("API_SCOPE", None)

    @property
    def PREPARE_STATEMENTS(self) -> bool:  # noqa: N802
        """Whether the hot statements (claim, step checkpoint, finish) are prepared on PostgreSQL."""
        return bool(self._get("PREPARE_STATEMENTS", default=True))

    @property
    def API_MAX_BODY_BYTES(self) -> int:  # noqa: N802
        """Largest request body the HTTP API reads; larger bodies get 413."""
        return int(self._get("API_MAX_BODY_BYTES", DEFAULT_API_MAX_BODY_BYTES))

    @property
    def API_MAX_JSON_DEPTH(self) -> int:  # noqa: N802
        """Deepest nesting of arrays and objects accepted in an HTTP API request body (422 beyond)."""
        return int(self._get("API_MAX_JSON_DEPTH", DEFAULT_API_MAX_JSON_DEPTH))

    @property
    def API_DOCS_PUBLIC(self) -> bool:  # noqa: N802
        """Whether ``openapi.json`` and the docs page of ``django_durably.urls`` are served to
        anyone; by default only to callers the API's auth admits (others get 401)."""
        return bool(self._get("API_DOCS_PUBLIC", default=False))

    @property
    def DEFAULT_RETRY(self) -> Any:  # noqa: N802
        """Retry policy of jobs declared without ``retry=``: a ``Retry``, a dict of its arguments,
        or ``None`` (no retry). ``retries.default_policy()`` reads it."""
        return self._get("DEFAULT_RETRY", None)

    @property
    def INLINE_RETRY_MAX_DELAY(self) -> float:  # noqa: N802
        """Longest step retry delay, in seconds, waited for in place (lease renewed); a longer one
        releases the run until its next try is due."""
        return float(self._get("INLINE_RETRY_MAX_DELAY", DEFAULT_INLINE_RETRY_MAX_DELAY))

    @property
    def MAX_RECLAIMS(self) -> int:  # noqa: N802
        """Lost workers a run without a retry policy survives: the reclaim past it fails the run."""
        return int(self._get("MAX_RECLAIMS", DEFAULT_MAX_RECLAIMS))

    @property
    def MAX_ABANDONED_THREADS(self) -> int:  # noqa: N802
        """Threads stuck in timed-out user code a worker keeps beside its slots; one more and it
        stops claiming, hands its runs back and restarts itself."""
        return int(self._get("MAX_ABANDONED_THREADS", DEFAULT_MAX_ABANDONED_THREADS))

    def raw(self, name: str) -> Any:
        """The value as written in settings (``None`` when unset), for system checks."""
        return getattr(django_settings, self.prefix + name, None)


durably_settings = DurablySettings()
