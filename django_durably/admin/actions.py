"""Operating runs from the admin: the bulk actions (the buttons on a run's page are in
:mod:`~django_durably.admin.buttons`).

Both call :mod:`django_durably.operations` for each run, never the models, with
``actor=request.user`` and ``source="admin"``. A bulk action narrows the selection to the runs its
state set allows, asks for confirmation on a page that lists them (as Django's delete does), then
acts on each, catches each typed error (a worker finished the run meanwhile, the job is gone, ...),
and reports one message with a count per outcome.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.functional import Promise
from django.utils.translation import gettext, gettext_noop, ngettext, ngettext_lazy
from django.utils.translation import gettext_lazy as _

from django_durably import operations
from django_durably.admin.display import (
    STATUS_ORDER,
    run_url,
    short_id,
    status_badge,
    status_word,
)
from django_durably.exceptions import (
    InvalidTrigger,
    JobNotFound,
    PendingRunExists,
    RunNotFound,
    RunStateError,
)
from django_durably.models import Run, RunQuerySet, RunStatus

if TYPE_CHECKING:
    _RunAdmin = admin.ModelAdmin[Run]
else:  # Generic in django-stubs only: ModelAdmin cannot be subscripted at runtime.
    _RunAdmin = admin.ModelAdmin

SOURCE = "admin"
"""The ``source`` of every audit record written from the admin."""

CONFIRM_LIST_LIMIT = 100
"""Runs listed by name on a confirmation page."""

CONFIRMATION_TEMPLATE = "admin/durably/run/action_confirmation.html"

# What a bulk action reports for runs it left alone, by status or by the error it met.
_STILL_PENDING = gettext_noop("%(count)d still pending")
_STILL_RUNNING = gettext_noop("%(count)d still running")
_ALREADY_COMPLETED = gettext_noop("%(count)d already completed")
_CANCEL_SKIPS: dict[str, str] = {
    RunStatus.COMPLETED: _ALREADY_COMPLETED,
    RunStatus.FAILED: gettext_noop("%(count)d already failed"),
    RunStatus.CANCELLED: gettext_noop("%(count)d already cancelled"),
}
_RESUME_SKIPS: dict[str, str] = {
    RunStatus.PENDING: gettext_noop("%(count)d already pending"),
    RunStatus.LEASED: _STILL_RUNNING,
    RunStatus.COMPLETED: _ALREADY_COMPLETED,
}
_UNFINISHED_SKIPS: dict[str, str] = {
    RunStatus.PENDING: _STILL_PENDING,
    RunStatus.LEASED: _STILL_RUNNING,
}
_GONE = gettext_noop("%(count)d already deleted")
_BLOCKED = gettext_noop("%(count)d blocked by a pending run with the same concurrency key")
_NO_JOB = gettext_noop("%(count)d whose job is no longer registered")
_BAD_INPUT = gettext_noop("%(count)d whose input the job no longer accepts")
_ALREADY_RETRIGGERED = gettext_noop("%(count)d already retriggered from this page")


@dataclass(frozen=True)
class Confirmation:
    """What the confirmation page of an action says before it acts."""

    action: str
    """The action's name, which the page posts back."""
    title: str | Promise
    question: tuple[str, str]
    """Singular and plural, with ``%(count)d``."""
    consequence: str | Promise
    kept: str | Promise
    """Introduces the selected runs the action leaves alone, counted by status."""
    dangerous: bool = False
    """Shown as Django shows a delete (a red button)."""
    keyed: bool = False
    """The action creates runs: the page carries an idempotency key, so sending it twice (a double
    click, a reload) creates each run once."""


CONFIRM_CANCEL = Confirmation(
    action="cancel_runs",
    title=_("Cancel runs"),
    question=(
        gettext_noop("Are you sure you want to cancel this run?"),
        gettext_noop("Are you sure you want to cancel these %(count)d runs?"),
    ),
    consequence=_(
        "A pending run will not start; a running run stops at its next step boundary. "
        "Cancelled runs can be resumed later."
    ),
    kept=_("Runs that have already finished are left as they are:"),
)
CONFIRM_RESUME = Confirmation(
    action="resume_runs",
    title=_("Resume runs"),
    question=(
        gettext_noop("Are you sure you want to resume this run?"),
        gettext_noop("Are you sure you want to resume these %(count)d runs?"),
    ),
    consequence=_(
        "Each becomes pending again, on the same run id; its next attempt replays its completed "
        "steps instead of running them again."
    ),
    kept=_("Only failed and cancelled runs can be resumed; left as they are:"),
)
CONFIRM_RETRIGGER = Confirmation(
    action="retrigger_runs",
    title=_("Retrigger runs"),
    question=(
        gettext_noop("Are you sure you want to retrigger this finished run?"),
        gettext_noop("Are you sure you want to retrigger these %(count)d finished runs?"),
    ),
    consequence=_(
        "Each gets a new pending run with the same input, labels, queue, priority and "
        "concurrency key; the finished run is left as it is."
    ),
    kept=_("Runs that have not finished are left as they are:"),
    keyed=True,
)
CONFIRM_DELETE = Confirmation(
    action="delete_runs",
    title=_("Delete finished runs"),
    question=(
        gettext_noop("Are you sure you want to delete this finished run?"),
        gettext_noop("Are you sure you want to delete these %(count)d finished runs?"),
    ),
    consequence=_("Their steps and log lines are deleted with them; their audit records are kept."),
    kept=_("Runs that have not finished are kept:"),
    dangerous=True,
)


def state_error_message(exc: RunStateError) -> str:
    """``Run … cannot be resumed: it is running.``: the typed error, in the admin's words."""
    return gettext("Run %(id)s cannot %(action)s: it is %(status)s.") % {
        "id": exc.run_id,
        "action": exc.action,
        "status": status_word(exc.status),
    }


class RunActionForm(helpers.ActionForm):
    """Django's action form, plus a key made for each page load: sending the same page twice (a
    double click, a reload that resubmits) retriggers each run once."""

    idempotency_key = forms.CharField(widget=forms.HiddenInput, required=False, label="")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["idempotency_key"].initial = uuid.uuid4().hex


class Report:
    """What a bulk action did to the selected runs: ``"3 runs cancelled; 1 already completed."``"""

    def __init__(self, done: Any, skips: dict[str, str]) -> None:
        self._done = done  # ngettext_lazy(singular, plural, "count")
        self._skips: dict[str, str] = dict(skips)
        self.done = 0
        self.skipped: Counter[str] = Counter()

    def skip_status(self, status: str, count: int = 1) -> None:
        """``count`` runs left alone because they are ``status``."""
        self.skip(self._skips.get(status, "%(count)d " + status_word(status)), count)

    def skip(self, phrase: str, count: int = 1) -> None:
        self.skipped[phrase] += count

    def message(self) -> str:
        parts = [str(self._done % {"count": self.done})]
        parts += [gettext(phrase) % {"count": n} for phrase, n in self.skipped.items()]
        return "; ".join(parts) + "."

    @property
    def level(self) -> int:
        return messages.WARNING if self.skipped else messages.SUCCESS


def as_run_queryset(queryset: QuerySet[Run]) -> RunQuerySet:
    """The action's selection, with the state-set predicates of :class:`RunQuerySet`."""
    if isinstance(queryset, RunQuerySet):
        return queryset
    return Run.objects.using(queryset.db).filter(pk__in=queryset.values("pk"))


def _user_may(request: HttpRequest, *codenames: str) -> bool:
    return any(request.user.has_perm(f"durably.{codename}") for codename in codenames)


class RunOperationsAdmin(_RunAdmin):
    """The permissions and bulk actions of :class:`~django_durably.admin.runs.RunAdmin`."""

    actions = ["cancel_runs", "resume_runs", "retrigger_runs", "delete_runs"]
    action_form = RunActionForm

    # -- permissions ---------------------------------------------------------------------------

    def has_cancel_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        return _user_may(request, "cancel_run", "change_run")

    def has_resume_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        return _user_may(request, "resume_run", "change_run")

    def has_retrigger_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        return _user_may(request, "retrigger_run", "change_run")

    def has_delete_finished_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        """``durably.delete_run``, used by :meth:`delete_runs` only (Django's delete is off)."""
        return _user_may(request, "delete_run")

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        """The actions above, without Django's ``delete_selected`` (it would bypass the guarded
        delete). ``action_location`` is passed on where Django has it (6.1 and later)."""
        if action_location is None:
            actions = super().get_actions(request)
        else:
            actions = super().get_actions(request, action_location=action_location)  # type: ignore[call-arg]
        actions.pop("delete_selected", None)
        return actions

    # -- bulk actions --------------------------------------------------------------------------

    def _act_on_each(
        self,
        request: HttpRequest,
        queryset: QuerySet[Run],
        targets: RunQuerySet,
        report: Report,
        act: Callable[[uuid.UUID], bool],
    ) -> None:
        """Call ``act`` on each of ``targets`` (the selection narrowed to the runs the action can
        change) and report the other selected runs by status. ``act`` returns whether it changed
        the run; typed errors (lost races, a job gone) are counted, never raised."""
        left_out = Counter(
            queryset.exclude(pk__in=targets.values("pk")).values_list("status", flat=True)
        )
        for status in sorted(left_out, key=STATUS_ORDER.index):
            report.skip_status(status, left_out[status])
        for run_id in list(targets.order_by().values_list("pk", flat=True)):
            try:
                changed = act(run_id)
            except RunStateError as exc:
                report.skip_status(exc.status)
            except RunNotFound:
                report.skip(_GONE)
            except PendingRunExists:
                report.skip(_BLOCKED)
            except JobNotFound:
                report.skip(_NO_JOB)
            except InvalidTrigger:
                report.skip(_BAD_INPUT)
            else:
                report.done += changed
        self.message_user(request, report.message(), report.level)

    def _action_confirmation(
        self,
        request: HttpRequest,
        queryset: QuerySet[Run],
        targets: RunQuerySet,
        confirmation: Confirmation,
    ) -> TemplateResponse | None:
        """The action's confirmation page, or None once confirmed (or when no selected run can
        be changed: the action then only reports why)."""
        if request.POST.get("post") == "yes" or not targets.exists():
            return None
        kept = Counter(
            queryset.exclude(pk__in=targets.values("pk")).values_list("status", flat=True)
        )
        ids = list(targets.values_list("pk", flat=True))
        shown = targets.only("id", "job_name", "status")[:CONFIRM_LIST_LIMIT]
        site = self.admin_site.name
        singular, plural = confirmation.question
        context = {
            **self.admin_site.each_context(request),
            "title": confirmation.title,
            "subtitle": None,
            "opts": self.opts,
            "question": ngettext(singular, plural, len(ids)) % {"count": len(ids)},
            "consequence": confirmation.consequence,
            "dangerous": confirmation.dangerous,
            "runs": [
                (run, short_id(run.pk), run_url(run.pk, site), status_badge(run.status))
                for run in shown
            ],
            "count": len(ids),
            "more": max(len(ids) - CONFIRM_LIST_LIMIT, 0),
            "ids": ids,
            "kept_intro": confirmation.kept,
            "kept": [
                (status_word(status), kept[status])
                for status in sorted(kept, key=STATUS_ORDER.index)
            ],
            "action": confirmation.action,
            # The list page's key, or a new one for this page.
            "idempotency_key": (
                (request.POST.get("idempotency_key") or uuid.uuid4().hex)
                if confirmation.keyed
                else ""
            ),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        request.current_app = site
        return TemplateResponse(request, CONFIRMATION_TEMPLATE, context)

    @admin.action(description=_("Cancel selected runs"), permissions=["cancel"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> TemplateResponse | None:
        targets = as_run_queryset(queryset).cancellable()
        if page := self._action_confirmation(request, queryset, targets, CONFIRM_CANCEL):
            return page
        report = Report(
            ngettext_lazy("%(count)d run cancelled", "%(count)d runs cancelled", "count"),
            _CANCEL_SKIPS,
        )

        def act(run_id: uuid.UUID) -> bool:
            result = operations.cancel_run(run_id, actor=request.user, source=SOURCE)
            if not result.cancelled:
                report.skip_status(RunStatus.CANCELLED)
            return result.cancelled

        self._act_on_each(request, queryset, targets, report, act)
        return None

    @admin.action(description=_("Resume selected runs"), permissions=["resume"])
    def resume_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> TemplateResponse | None:
        targets = as_run_queryset(queryset).resumable()
        if page := self._action_confirmation(request, queryset, targets, CONFIRM_RESUME):
            return page
        report = Report(
            ngettext_lazy("%(count)d run resumed", "%(count)d runs resumed", "count"),
            _RESUME_SKIPS,
        )

        def act(run_id: uuid.UUID) -> bool:
            operations.resume_run(run_id, actor=request.user, source=SOURCE)
            return True

        self._act_on_each(request, queryset, targets, report, act)
        return None

    @admin.action(description=_("Retrigger selected runs"), permissions=["retrigger"])
    def retrigger_runs(
        self, request: HttpRequest, queryset: QuerySet[Run]
    ) -> TemplateResponse | None:
        targets = as_run_queryset(queryset).finished()
        if page := self._action_confirmation(request, queryset, targets, CONFIRM_RETRIGGER):
            return page
        report = Report(
            ngettext_lazy("%(count)d run retriggered", "%(count)d runs retriggered", "count"),
            _UNFINISHED_SKIPS,
        )
        key = request.POST.get("idempotency_key") or None

        def act(run_id: uuid.UUID) -> bool:
            new_run = operations.retrigger_run(
                run_id, actor=request.user, source=SOURCE, idempotency_key=key
            )
            if new_run.disposition == "idempotent":
                report.skip(_ALREADY_RETRIGGERED)
                return False
            return True

        self._act_on_each(request, queryset, targets, report, act)
        return None

    @admin.action(description=_("Delete selected finished runs"), permissions=["delete_finished"])
    def delete_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> TemplateResponse | None:
        targets = as_run_queryset(queryset).finished()
        if page := self._action_confirmation(request, queryset, targets, CONFIRM_DELETE):
            return page
        report = Report(
            ngettext_lazy("%(count)d run deleted", "%(count)d runs deleted", "count"),
            _UNFINISHED_SKIPS,
        )

        def act(run_id: uuid.UUID) -> bool:
            operations.delete_run(run_id, actor=request.user, source=SOURCE)
            return True

        self._act_on_each(request, queryset, targets, report, act)
        return None
