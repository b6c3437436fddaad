"""Helpers for tests that use real threads or processes: a result-capturing thread, and waits that
always have a deadline (``wait_until``, ``wait_event``) or a window (``holds``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import connections


class BackgroundThread(threading.Thread):
    """Runs ``fn(*args, **kwargs)`` and keeps its result or exception for :meth:`outcome`.

    Closes the thread's database connections when done.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._fn(*self._args, **self._kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc
        finally:
            connections.close_all()

    def outcome(self, timeout: float = 30) -> Any:
        """Wait for the thread; return its result or re-raise its exception."""
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"{self._fn!r} did not finish within {timeout}s")
        if self.error is not None:
            raise self.error
        return self.result


def start(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> BackgroundThread:
    thread = BackgroundThread(fn, *args, **kwargs)
    thread.start()
    return thread


def at_once(
    *fns: Callable[[], Any],
    catch: type[BaseException] | tuple[type[BaseException], ...] = (),
    timeout: float = 30,
) -> list[Any]:
    """Call each of ``fns`` on its own thread (with its own database connections), all released
    together by a barrier: a race. Returns what each returned, or the exception it raised if that
    is one of ``catch``; any other exception is raised here."""
    barrier = threading.Barrier(len(fns))

    def lined_up(fn: Callable[[], Any]) -> Any:
        barrier.wait(10)
        try:
            return fn()
        except catch as exc:
            return exc

    threads = [start(lined_up, fn) for fn in fns]
    return [thread.outcome(timeout) for thread in threads]


def start_worker(worker: Any) -> threading.Thread:
    """Run ``worker.run()`` on a thread, and return once the worker says it has ``started``.

    The thread closes its database connections when it ends. Unlike :func:`start`, it keeps no
    exception: one reaches pytest, which fails the test (an unhandled thread exception is an error).
    """

    def target() -> None:
        try:
            worker.run()
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    wait_event(worker.started, what=f"{worker!r} to start")
    return thread


def wait_until(
    predicate: Callable[[], Any],
    *,
    timeout: float = 10,
    interval: float = 0.01,
    what: str = "",
    meanwhile: Callable[[], None] | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or fail at the deadline.

    ``meanwhile`` is called after each miss: it raises to fail the wait early (say, when a process
    the wait depends on has died)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if meanwhile is not None:
            meanwhile()
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate!r}")
        time.sleep(interval)


def holds(
    predicate: Callable[[], Any], *, seconds: float, what: str = "", interval: float = 0.02
) -> None:
    """Check that ``predicate`` stays true for ``seconds``: an observation window, for negatives
    (nothing happens that should not)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            raise AssertionError(
                f"expected {what or predicate!r} to hold for {seconds}s, but it did not"
            )
        time.sleep(interval)


def wait_event(event: threading.Event, *, timeout: float = 10, what: str = "") -> None:
    if not event.wait(timeout):
        raise AssertionError(f"timed out after {timeout}s waiting for {what or event!r}")
