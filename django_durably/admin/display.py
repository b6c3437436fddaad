"""HTML for the admin's columns and fields. Everything is built with ``format_html``, so stored
values (inputs, outputs, errors, labels, log lines) are always escaped."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django.contrib.admin.utils import quote
from django.urls import reverse
from django.utils import timezone
from django.utils.dateformat import format as format_date
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext, ngettext

from django_durably.models import AttemptOutcome, AuditAction, AuditRecord, Run, RunStatus

STATUS_COLOURS: dict[str, str] = {
    RunStatus.PENDING: "#6b7280",
    RunStatus.LEASED: "#2563eb",
    RunStatus.WAITING: "#0f766e",
    RunStatus.COMPLETED: "#15803d",
    RunStatus.FAILED: "#b91c1c",
    RunStatus.CANCELLED: "#b45309",
}
OUTCOME_COLOURS: dict[str, str] = {
    AttemptOutcome.COMPLETED: "#15803d",
    AttemptOutcome.FAILED: "#b91c1c",
    AttemptOutcome.TIMED_OUT: "#9a3412",
    AttemptOutcome.STEP_RETRY: "#0e7490",
    AttemptOutcome.CANCELLED: "#b45309",
    AttemptOutcome.LOST: "#7c3aed",
    AttemptOutcome.RELEASED: "#6b7280",
    AttemptOutcome.WAITING: "#0f766e",
}
"""How an attempt ended, in the status colours where it means the same (a failure is red)."""
STATUS_ORDER = [status.value for status in RunStatus]
"""The order in which statuses are listed in messages."""

SUMMARY_LENGTH = 80
"""Characters of JSON shown in a table cell before it folds."""

TIME_FORMAT = "Y-m-d H:i:s"
"""Every time the admin shows: to the second, in the current time zone (Django's default formats
stop at the minute). Hovering shows the exact time with its offset."""

LIST_LABELS = 3
"""Labels shown in a row of the run list; the others are counted (all are on the run's page)."""


def short_id(run_id: Any) -> str:
    """The first 8 characters of a run id, as the run list shows it (and search accepts)."""
    return str(run_id)[:8]


def run_url(run_id: Any, site_name: str = "admin") -> str:
    return reverse("admin:durably_run_change", args=(quote(str(run_id)),), current_app=site_name)


def status_label(status: str) -> str:
    """A status as the admin names it for people, everywhere: the choice's label, so ``leased`` is
    "Running" in badges, filters, titles, transitions and messages alike (DESIGN.md section 3).
    Step statuses are run statuses too. Unknown values are shown as they are."""
    return str(RunStatus(status).label) if status in RunStatus.values else status


def status_word(status: str) -> str:
    """:func:`status_label` inside a sentence: ``running``, ``completed``."""
    return status_label(status).lower()


def _badge(kind: str, value: str, colour: str, label: str) -> SafeString:
    return format_html(
        '<span class="durably-{0} durably-{0}-{1}" style="display:inline-block;'
        "padding:1px 7px;border-radius:9px;color:#fff;background:{2};font-size:11px;"
        'font-weight:600;white-space:nowrap">{3}</span>',
        kind,
        value,
        colour,
        label,
    )


def status_badge(status: str) -> SafeString:
    return _badge("status", status, STATUS_COLOURS.get(status, "#6b7280"), status_label(status))


def outcome_badge(outcome: str) -> SafeString:
    """How an attempt ended: ``Worker lost``, ``Released for a step retry``... (the choice's
    label; an unknown value as it is)."""
    label = str(AttemptOutcome(outcome).label) if outcome in AttemptOutcome.values else outcome
    return _badge("outcome", outcome, OUTCOME_COLOURS.get(outcome, "#6b7280"), label)


def try_label(number: int) -> str:
    """``try 2``: which call of a step's function."""
    return gettext("try %(number)d") % {"number": number}


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


def _local(value: datetime) -> datetime:
    return timezone.localtime(value) if timezone.is_aware(value) else value


def time_text(value: datetime) -> str:
    """``2026-12-06 17:48:36``: :data:`TIME_FORMAT` in the current time zone."""
    return format_date(_local(value), TIME_FORMAT)


def format_time(value: datetime | None) -> SafeString | None:
    """:func:`time_text` in a ``<time>`` element (the exact time in its tooltip), or None."""
    if value is None:
        return None
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        value.isoformat(),
        _local(value).isoformat(),
        time_text(value),
    )


def format_time_ahead(value: datetime | None) -> SafeString | None:
    """:func:`format_time`, and how soon while it is ahead: ``... (in 4 min 05 s)``."""
    shown = format_time(value)
    if shown is None or value is None or value <= timezone.now():
        return shown
    return format_html("{} ({})", shown, relative(value))


def relative(when: datetime, now: datetime | None = None) -> str:
    """``in 4 min 05 s`` or ``12.0 s ago``."""
    delta = when - (now or timezone.now())
    if delta >= timedelta(0):
        return gettext("in %(duration)s") % {"duration": format_duration(delta)}
    return gettext("%(duration)s ago") % {"duration": format_duration(-delta)}


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


def _step_try(error: dict[str, Any]) -> int | None:
    """The try of the step whose failure ended an attempt (stored as text or a number), or None."""
    value = error.get("step_attempt")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else None


def error_headline(error: dict[str, Any]) -> str:
    """``type: message`` (the message's first line), after the step and try a step retry names:
    ``step fetch, try 2: builtins.OSError: disk full``."""
    lines = str(error.get("message", "")).splitlines()
    headline = f"{error.get('type', '')}: {lines[0] if lines else ''}"
    if error.get("step") is None:
        return headline
    where = gettext("step %(name)s") % {"name": error["step"]}
    number = _step_try(error)
    if number is not None:
        where = f"{where}, {try_label(number)}"
    return f"{where}: {headline}"


def short_error(error: Any) -> SafeString:
    """:func:`error_headline`, cut to :data:`SUMMARY_LENGTH` characters, unfolding to the whole
    message and the traceback."""
    if not isinstance(error, dict):
        return json_summary(error)
    headline = error_headline(error)
    shown = headline if len(headline) <= SUMMARY_LENGTH else headline[:SUMMARY_LENGTH] + "…"
    message = str(error.get("message", ""))
    more = []
    if shown != headline or "\n" in message.strip():
        more.append(format_html('<pre class="durably-traceback">{}</pre>', message))
    if error.get("traceback"):
        more.append(format_html('<pre class="durably-traceback">{}</pre>', error["traceback"]))
    if not more:
        return format_html('<span class="durably-error">{}</span>', headline)
    return format_html(
        '<details class="durably-error"><summary>{}</summary>{}</details>',
        shown,
        format_html_join("", "{}", ((part,) for part in more)),
    )


def labels_html(labels: Any, *, limit: int | None = None) -> SafeString | None:
    """``key=value`` chips, sorted; past ``limit``, ``+2 more`` (all of them in its tooltip)."""
    if not isinstance(labels, dict) or not labels:
        return None
    pairs = sorted((str(k), str(v)) for k, v in labels.items())
    shown, hidden = (pairs, []) if limit is None else (pairs[:limit], pairs[limit:])
    chips = format_html_join(
        " ", '<code class="durably-label" title="{0}={1}">{0}={1}</code>', shown
    )
    if not hidden:
        return chips
    return format_html(
        '{} <span class="durably-more-labels" title="{}">{}</span>',
        chips,
        ", ".join(f"{k}={v}" for k, v in hidden),
        ngettext("+%(count)d more", "+%(count)d more", len(hidden)) % {"count": len(hidden)},
    )


def transition(record: AuditRecord) -> str:
    """``running → cancelled``, in the words of :func:`status_label`; ``running (unchanged)`` for
    a signal that did not wake its run."""
    if record.action == AuditAction.SIGNAL and not record.to_status:
        return gettext("%(status)s (unchanged)") % {"status": status_word(record.from_status)}
    after = status_word(record.to_status) if record.to_status else "-"
    return f"{status_word(record.from_status)} → {after}"


def run_title(run: Run) -> str:
    """A run's page title: ``tests.jobs.noop 3c7fce50-… (running)``."""
    return f"{run.job_name} {run.pk} ({status_word(run.status)})"


def audit_title(record: AuditRecord) -> str:
    """An audit record's page title: ``Cancel 3c7fce50-… by alice (running → cancelled)``."""
    action = (
        AuditAction(record.action).label if record.action in AuditAction.values else record.action
    )
    who = record.actor or record.source
    return f"{action} {record.run_uuid} by {who} ({transition(record)})"


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
