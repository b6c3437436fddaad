"""HTML for the admin's columns and fields. Everything is built with ``format_html``, so stored
values (inputs, outputs, errors, labels, log lines) are always escaped."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.contrib.admin.utils import quote
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext

from django_durably.models import AuditRecord, Run, RunStatus

STATUS_COLOURS: dict[str, str] = {
    RunStatus.PENDING: "#6b7280",
    RunStatus.LEASED: "#2563eb",
    RunStatus.COMPLETED: "#15803d",
    RunStatus.FAILED: "#b91c1c",
    RunStatus.CANCELLED: "#b45309",
}
STATUS_ORDER = [status.value for status in RunStatus]
"""The order in which statuses are listed in messages."""

SUMMARY_LENGTH = 80
"""Characters of JSON shown in a table cell before it folds."""


def short_id(run_id: Any) -> str:
    """The first 8 characters of a run id, as the run list shows it (and search accepts)."""
    return str(run_id)[:8]


def run_url(run_id: Any, site_name: str = "admin") -> str:
    return reverse("admin:durably_run_change", args=(quote(str(run_id)),), current_app=site_name)


def status_badge(status: str) -> SafeString:
    label = RunStatus(status).label if status in RunStatus.values else status
    return format_html(
        '<span class="durably-status durably-status-{}" style="display:inline-block;'
        "padding:1px 7px;border-radius:9px;color:#fff;background:{};font-size:11px;"
        'font-weight:600;white-space:nowrap">{}</span>',
        status,
        STATUS_COLOURS.get(status, "#6b7280"),
        label,
    )


def _number(value: float) -> str:
    return f"{value:g}"


def progress_bar(progress: Any, *, with_message: bool = False) -> SafeString | None:
    """A ``<progress>`` bar and ``current/total``; just ``current`` without a total."""
    if not isinstance(progress, dict):
        return None
    current, total = progress.get("current"), progress.get("total")
    message = progress.get("message") or ""
    if not isinstance(current, int | float):
        return None
    shown_message = format_html(" {}", message) if with_message and message else ""
    if isinstance(total, int | float) and total > 0:
        percent = f"{max(0.0, min(100.0, current * 100 / total)):.0f}"
        return format_html(
            '<progress value="{}" max="100" title="{}" style="width:7em;vertical-align:middle">'
            '{}%</progress> <span class="durably-progress">{}/{}</span>{}',
            percent,
            message,
            percent,
            _number(current),
            _number(total),
            shown_message,
        )
    return format_html(
        '<span class="durably-progress">{}</span>{}', _number(current), shown_message
    )


def format_duration(duration: timedelta) -> str:
    seconds = max(duration.total_seconds(), 0.0)
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def run_duration(run: Run) -> timedelta | None:
    """First claim to finish; for a running run, first claim to now."""
    if run.started_at is None:
        return None
    if run.completed_at is not None:
        return run.completed_at - run.started_at
    if run.status == RunStatus.LEASED:
        return timezone.now() - run.started_at
    return None


def json_text(value: Any, *, indent: int | None = None) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=False, default=str)


def pretty_json(value: Any) -> SafeString:
    return format_html('<pre class="durably-json">{}</pre>', json_text(value, indent=2))


def json_summary(value: Any) -> SafeString:
    """One line of JSON; when it is long, its start, unfolding to the whole value."""
    text = json_text(value)
    if len(text) <= SUMMARY_LENGTH:
        return format_html("<code>{}</code>", text)
    return format_html(
        "<details><summary><code>{}…</code></summary>{}</details>",
        text[:SUMMARY_LENGTH],
        pretty_json(value),
    )


def pretty_error(error: Any) -> SafeString:
    """``type: message`` and the traceback of a stored error; any other keys as JSON."""
    if not isinstance(error, dict):
        return pretty_json(error)
    parts = [
        format_html("<strong>{}</strong>: {}", error.get("type", ""), error.get("message", ""))
    ]
    if error.get("traceback"):
        parts.append(format_html('<pre class="durably-traceback">{}</pre>', error["traceback"]))
    extra = {k: v for k, v in error.items() if k not in {"type", "message", "traceback"}}
    if extra:
        parts.append(pretty_json(extra))
    return format_html_join("", "{}", ((part,) for part in parts))


def error_summary(error: Any) -> SafeString:
    """``type: message``, unfolding to the traceback."""
    if not isinstance(error, dict):
        return json_summary(error)
    headline = f"{error.get('type', '')}: {error.get('message', '')}"
    if not error.get("traceback"):
        return format_html("{}", headline)
    return format_html(
        '<details><summary>{}</summary><pre class="durably-traceback">{}</pre></details>',
        headline,
        error["traceback"],
    )


def labels_html(labels: Any) -> SafeString | None:
    if not isinstance(labels, dict) or not labels:
        return None
    return format_html_join(
        " ", "<code>{}={}</code>", sorted((str(k), str(v)) for k, v in labels.items())
    )


def transition(record: AuditRecord) -> str:
    return f"{record.from_status} → {record.to_status or '-'}"


def audit_detail(record: AuditRecord, site_name: str) -> SafeString | None:
    """A link to the run a retrigger created; other details as JSON."""
    detail = record.detail or {}
    new_run_id = detail.get("new_run_id")
    if new_run_id:
        return format_html(
            '{} <a href="{}">{}</a>',
            gettext("new run"),
            run_url(new_run_id, site_name),
            short_id(new_run_id),
        )
    return json_summary(detail) if detail else None
