"""Durable waits in the admin's words: what a run waits for and until when, its parent and child
runs, and the signals sent to it.

A run at a durable wait is ``waiting``: ``waiting_for`` says for what (a sleep, a signal, runs) and
in which step, ``wake_at`` until when (none: no deadline). Woken, it is pending again and keeps
``waiting_for`` until the wait returns, so its page says it was woken rather than that it waits.

The signals and child runs are read-only tables on the run's page, in the markup of the attempt
timeline, each with its first rows only; the child runs table links to the run list filtered by
parent (``?parent=<id>``), which has them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import Exists, OuterRef
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.functional import Promise
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from django_durably.admin.display import (
    format_time,
    format_time_ahead,
    json_summary,
    run_url,
    short_id,
    status_badge,
    status_word,
)
from django_durably.admin.inlines import INLINE_ROW_LIMIT
from django_durably.models import TERMINAL_STATUSES, Run, RunStatus, Signal

if TYPE_CHECKING:
    _RunAdmin = admin.ModelAdmin[Run]
else:  # Generic in django-stubs only: ModelAdmin cannot be subscripted at runtime.
    _RunAdmin = admin.ModelAdmin

PARENT_PARAMETER = "parent"
"""The run list's query-string key for a parent's child runs (``?parent=<run id>``)."""

CHILD_ROW_LIMIT = 50
"""Child runs listed on their parent's page; the run list filtered by parent has them all."""

WAIT_FIELDS = ("waiting_for_display", "waking_at", "parent_display")
"""The run page's fields of this module (hidden when the run has none of it)."""

TimeFormat = Callable[[datetime | None], SafeString | None]


# -- what a run waits for ----------------------------------------------------------------------


def wait_until(run: Run) -> datetime | None:
    """When the run's wait ends at the latest: its ``wake_at``, or else the ``until`` its wait
    recorded (a woken run keeps it); None for a wait without a deadline."""
    if run.wake_at is not None:
        return run.wake_at
    until = run.waiting_for.get("until") if isinstance(run.waiting_for, dict) else None
    if not isinstance(until, str):
        return None
    try:
        when = parse_datetime(until)
    except ValueError:  # well formed, but not a date (2026-02-30)
        return None
    if when is not None and timezone.is_naive(when):  # compared with aware times: read as UTC
        when = when.replace(tzinfo=UTC)
    return when


def waited_runs(waiting_for: Any) -> list[str]:
    """The ids of the runs a ``runs`` wait waits for (as stored: text)."""
    runs = waiting_for.get("runs") if isinstance(waiting_for, dict) else None
    return [str(run_id) for run_id in runs] if isinstance(runs, list) else []


def describe_wait(
    waiting_for: Any, until: datetime | None, *, time: TimeFormat = format_time
) -> SafeString | None:
    """``Waiting for signal 'approval' until <time>``, ``Sleeping until <time>``, ``Waiting for 3
    child runs``; None when ``waiting_for`` is not a wait. ``time`` shows the deadline."""
    if not isinstance(waiting_for, dict):
        return None
    kind = waiting_for.get("kind")
    shown = time(until) if until is not None else None
    if kind == "sleep":
        if shown is None:
            return format_html("{}", gettext("Sleeping"))
        return format_html(gettext("Sleeping until {until}"), until=shown)
    if kind == "signal":
        name = str(waiting_for.get("signal") or waiting_for.get("step") or "")
        if shown is None:
            return format_html(gettext("Waiting for signal '{name}'"), name=name)
        return format_html(
            gettext("Waiting for signal '{name}' until {until}"), name=name, until=shown
        )
    if kind == "runs":
        count = len(waited_runs(waiting_for))
        if shown is None:
            text = ngettext(
                "Waiting for {count} child run", "Waiting for {count} child runs", count
            )
            return format_html(text, count=count)
        text = ngettext(
            "Waiting for {count} child run until {until}",
            "Waiting for {count} child runs until {until}",
            count,
        )
        return format_html(text, count=count, until=shown)
    if shown is None:
        return format_html(gettext("Waiting for {kind}"), kind=str(kind))
    return format_html(gettext("Waiting for {kind} until {until}"), kind=str(kind), until=shown)


def list_wait_note(run: Run) -> SafeString | None:
    """What a waiting run waits for, as the run list shows it under its badge."""
    if run.status != RunStatus.WAITING:
        return None
    return describe_wait(run.waiting_for, wait_until(run))


def children_url(run_id: Any, site_name: str = "admin") -> str:
    """The run list of ``run_id``'s child runs."""
    changelist = reverse("admin:durably_run_changelist", current_app=site_name)
    return f"{changelist}?{urlencode({PARENT_PARAMETER: str(run_id)})}"


def run_link(run_id: Any, site_name: str) -> SafeString:
    """A run's short id, linked to its page (the whole id in its tooltip)."""
    return format_html(
        '<a href="{}"><code title="{}">{}</code></a>',
        run_url(run_id, site_name),
        run_id,
        short_id(run_id),
    )


# -- tables --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A column of a table on the run's page: its class (``field-<name>``), header and cell
    (``None``: the admin's empty value)."""

    name: str
    label: str | Promise
    cell: Callable[[Any], SafeString | str | None]


class Table:
    """Rows of a read-only table rendered by ``attempt_timeline.html``, the markup of the inlines:
    its first ``limit`` rows (one query), and their count when there may be more (a second)."""

    prefix = ""
    heading: str | Promise | None = ""
    columns: Sequence[Column] = ()
    more_url = ""
    """A link under the table (to every row), or none."""
    more_text = ""

    def __init__(self, rows: Any, *, limit: int, empty: str) -> None:
        shown = list(rows[:limit])
        total = rows.count() if len(shown) >= limit else len(shown)
        self.total = total
        self.rows = [
            [(column.name, column.cell(row) or empty) for column in self.columns] for row in shown
        ]
        self.hidden_rows = total - len(shown)


def _sent_by(signal: Signal) -> str:
    """``ada (admin)``; just the source when no one is named."""
    return f"{signal.sent_by} ({signal.source})" if signal.sent_by else signal.source


def _consumed_at(signal: Signal) -> SafeString:
    shown = format_time(signal.consumed_at)
    if shown is not None:
        return shown
    return format_html('<span class="durably-unconsumed">{}</span>', gettext("not yet"))


SIGNAL_COLUMNS = (
    Column("name", _("name"), lambda signal: format_html("<code>{}</code>", signal.name)),
    Column(
        "payload_summary",
        _("payload"),
        lambda signal: json_summary(signal.payload) if signal.payload is not None else None,
    ),
    Column(
        "idempotency_key",
        _("idempotency key"),
        lambda signal: (
            format_html("<code>{}</code>", signal.idempotency_key)
            if signal.idempotency_key
            else None
        ),
    ),
    Column("sent_by", _("sent by"), _sent_by),
    Column("sent", _("sent at"), lambda signal: format_time(signal.sent_at)),
    Column("consumed", _("consumed at"), _consumed_at),
    Column(
        "consumed_by_step", _("consumed by step"), lambda signal: signal.consumed_by_step or None
    ),
)


class SignalTable(Table):
    """The signals sent to the run, oldest first: each wait consumes the oldest unconsumed one of
    its name, so this is the order they are received in."""

    prefix = "signals"
    heading = Signal._meta.verbose_name_plural
    columns = SIGNAL_COLUMNS

    def __init__(self, run: Run, *, empty: str) -> None:
        super().__init__(run.signals.order_by("id"), limit=INLINE_ROW_LIMIT, empty=empty)


class ChildRunTable(Table):
    """The runs the run's steps triggered (``step.trigger``), in the order they were created."""

    prefix = "children"
    heading = _("child runs")

    def __init__(self, run: Run, *, empty: str, site_name: str) -> None:
        self.columns = (
            Column("run", _("run"), lambda child: run_link(child.pk, site_name)),
            Column("job", _("job"), lambda child: child.job_name),
            Column("status", _("status"), lambda child: status_badge(child.status)),
            Column("created", _("created at"), lambda child: format_time(child.created_at)),
            Column("finished", _("finished at"), lambda child: format_time(child.completed_at)),
        )
        children = run.children.only(
            "id", "job_name", "status", "created_at", "completed_at"
        ).order_by("created_at", "id")
        super().__init__(children, limit=CHILD_ROW_LIMIT, empty=empty)
        self.more_url = children_url(run.pk, site_name)
        self.more_text = ngettext(
            "Show the child run in the run list",
            "Show the %(count)d child runs in the run list",
            self.total,
        ) % {"count": self.total}


# -- the run's page ------------------------------------------------------------------------------


def hidden_wait_fields(run: Run | None) -> set[str]:
    """The fields of :data:`WAIT_FIELDS` that ``run`` has nothing for."""
    hidden = set()
    if run is None or run.waiting_for is None:
        hidden.add("waiting_for_display")
    if run is None or run.wake_at is None:
        hidden.add("waking_at")
    if run is None or run.parent_id is None:
        hidden.add("parent_display")
    return hidden


HAS_SIGNALS = "_durably_has_signals"
HAS_CHILDREN = "_durably_has_children"


class RunWaitsAdmin(_RunAdmin):
    """The waits, parent, child runs and signals of
    :class:`~django_durably.admin.runs.RunAdmin`'s run page."""

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> Run | None:
        """Django's, with whether the run has signals and child runs (two ``EXISTS`` in the
        run's query), so that a run with neither costs no query for them."""
        queryset = self.get_queryset(request).annotate(
            **{
                HAS_SIGNALS: Exists(Signal.objects.filter(run=OuterRef("pk"))),
                HAS_CHILDREN: Exists(Run.objects.filter(parent=OuterRef("pk"))),
            }
        )
        field: Any = Run._meta.pk if from_field is None else Run._meta.get_field(from_field)
        try:
            return queryset.get(**{field.name: field.to_python(object_id)})
        except (Run.DoesNotExist, ValidationError, ValueError):
            return None

    @admin.display(description=_("wait"))
    def waiting_for_display(self, run: Run) -> SafeString | str:
        """What the run waits for, until when (and how soon), and in which step; a woken run
        says so. A wait for runs also says how many of them have finished (one query)."""
        waiting_for = run.waiting_for
        wait = describe_wait(waiting_for, wait_until(run), time=format_time_ahead)
        if wait is None or not isinstance(waiting_for, dict):
            return self.get_empty_value_display()
        if waiting_for.get("kind") == "runs":
            finished = (
                Run.objects.using(run._state.db)
                .filter(pk__in=waited_runs(waiting_for), status__in=TERMINAL_STATUSES)
                .count()
            )
            wait = format_html("{} ({})", wait, gettext("%(count)d finished") % {"count": finished})
        step = waiting_for.get("step")
        if step:
            wait = format_html(gettext("{wait}, in step '{step}'"), wait=wait, step=str(step))
        if run.status == RunStatus.WAITING:
            return format_html("{}.", wait)
        return format_html(
            '{}. <span class="durably-woken">{}</span>',
            wait,
            gettext("Woken: the wait returns when the run reaches it again (it is %(status)s).")
            % {"status": status_word(run.status)},
        )

    @admin.display(description=_("waking at"))
    def waking_at(self, run: Run) -> SafeString | str:
        """When the run's timer wakes it (a sleep's end, a wait's timeout), and how soon."""
        return format_time_ahead(run.wake_at) or self.get_empty_value_display()

    @admin.display(description=_("parent run"))
    def parent_display(self, run: Run) -> SafeString | str:
        """The run whose step triggered this one."""
        if run.parent_id is None:
            return self.get_empty_value_display()
        return run_link(run.parent_id, self.admin_site.name)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,  # noqa: FBT001, FBT002 - Django's signature
        change: bool = False,  # noqa: FBT001, FBT002
        form_url: str = "",
        obj: Run | None = None,
    ) -> HttpResponse:
        """The signals table (when the run has signals or waits for one) and the child runs
        table (when it has children): a query each, and a count each when they are long."""
        if obj is not None:
            empty = self.get_empty_value_display()
            waits_for_signal = isinstance(obj.waiting_for, dict) and (
                obj.waiting_for.get("kind") == "signal"
            )
            if getattr(obj, HAS_SIGNALS, True) or waits_for_signal:
                context["durably_signals"] = SignalTable(obj, empty=empty)
            if getattr(obj, HAS_CHILDREN, True):
                children = ChildRunTable(obj, empty=empty, site_name=self.admin_site.name)
                context["durably_children"] = children if children.rows else None
        return super().render_change_form(request, context, add, change, form_url, obj)
