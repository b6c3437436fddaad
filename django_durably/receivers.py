"""Signal handlers that django-durably connects itself: logging of failed runs."""

from __future__ import annotations

import logging
from typing import Any

from django_durably import signals

logger = logging.getLogger("django_durably.runs")


def log_run_failed(
    sender: Any, *, run_id: Any, job_name: str, error: dict[str, str], **kwargs: Any
) -> None:
    """Failed runs are logged at ERROR with their traceback, so error trackers pick them up."""
    logger.error(
        "Run %s of %s failed: %s: %s\n%s",
        run_id,
        job_name,
        error.get("type"),
        error.get("message"),
        error.get("traceback", ""),
        extra={"action": "failed", "run_id": str(run_id), "job": job_name},
    )


def connect() -> None:
    signals.run_failed.connect(log_run_failed, dispatch_uid="django_durably.log_run_failed")
