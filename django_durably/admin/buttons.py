"""The buttons on a run's page: Cancel, Resume and Retrigger, each through a confirmation page.

A button is a link to its confirmation page (``GET``), whose form posts back to the same URL; the
``POST`` acts, like Django's delete view. Both need the action's permission and the permission to
view runs, as Django's own views do. The outcome, or the typed error that refused it, becomes a
message on the run's page.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.functional import Promise
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from django_durably import operations
from django_durably.admin.actions import SOURCE, RunOperationsAdmin, state_error_message
from django_durably.admin.display import run_url, short_id, status_badge
from django_durably.exceptions import (
    InvalidTrigger,
    JobNotFound,
    PendingRunExists,
    RunNotCancellable,
    RunNotFound,
    RunNotResumable,
    RunNotRetriggerable,
    RunStateError,
)
from django_durably.models import (
    CANCELLABLE_STATUSES,
    RESUMABLE_STATUSES,
    TERMINAL_STATUSES,
    Run,
    RunStatus,
)

CONFIRMATION_TEMPLATE = "admin/durably/run/button_confirmation.html"


@dataclass(frozen=True)
class Button:
    action: str
    label: str | Promise
    statuses: tuple[str, ...]
    refusal: type[RunStateError]
    """The error for a run whose status does not allow the action."""
    question: str | Promise
    consequence: str | Promise
    keyed: bool = False
    """The action creates a run: the confirmation page carries a key made for it, so sending it
    twice creates one run and shows it."""


BUTTONS = (
    Button(
        action="cancel",
        label=_("Cancel run"),
        statuses=CANCELLABLE_STATUSES,
        refusal=RunNotCancellable,
        question=_("Are you sure you want to cancel this run?"),
        consequence=_(
            "A pending run will not start; a running run stops at its next step boundary. "
            "A cancelled run can be resumed later."
        ),
    ),
    Button(
        action="resume",
        label=_("Resume run"),
        statuses=RESUMABLE_STATUSES,
        refusal=RunNotResumable,
        question=_("Are you sure you want to resume this run?"),
        consequence=_(
            "It becomes pending again, on the same run id; its next attempt replays its "
            "completed steps instead of running them again."
        ),
    ),
    Button(
        action="retrigger",
        label=_("Retrigger run"),
        statuses=TERMINAL_STATUSES,
        refusal=RunNotRetriggerable,
        question=_("Are you sure you want to retrigger this run?"),
        consequence=_(
            "A new pending run is created with the same input, labels, queue, priority and "
            "concurrency key; this run is left as it is."
        ),
        keyed=True,
    ),
)
_BUTTON = {button.action: button for button in BUTTONS}


class RunButtonsAdmin(RunOperationsAdmin):
    """The buttons of :class:`~django_durably.admin.runs.RunAdmin`."""

    def _allowed(self, request: HttpRequest, action: str) -> bool:
        allowed: Callable[[HttpRequest], bool] = getattr(self, f"has_{action}_permission")
        return self.has_view_permission(request) and allowed(request)

    def _url(self, action: str, run_id: Any) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_{action}",
            args=(quote(str(run_id)),),
            current_app=self.admin_site.name,
        )

    def get_urls(self) -> list[URLPattern]:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        views = {
            "cancel": self.cancel_view,
            "resume": self.resume_view,
            "retrigger": self.retrigger_view,
        }
        urls = [
            path(
                f"<path:object_id>/{button.action}/",
                self.admin_site.admin_view(views[button.action]),
                name=f"{prefix}_{button.action}",
            )
            for button in BUTTONS
        ]
        return urls + super().get_urls()

    def buttons(self, request: HttpRequest, run: Run) -> list[dict[str, str]]:
        """The buttons the run's status and the user's permissions allow."""
        return [
            {
                "action": button.action,
                "label": str(button.label),
                "url": self._url(button.action, run.pk),
            }
            for button in BUTTONS
            if run.status in button.statuses and self._allowed(request, button.action)
        ]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,  # noqa: FBT001, FBT002 - Django's signature
        change: bool = False,  # noqa: FBT001, FBT002
        form_url: str = "",
        obj: Run | None = None,
    ) -> HttpResponse:
        if change and obj is not None:
            context["durably_buttons"] = self.buttons(request, obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _button_view(
        self,
        request: HttpRequest,
        object_id: str,
        button: Button,
        act: Callable[[Run], HttpResponse],
    ) -> HttpResponse:
        """``GET``: the confirmation page; ``POST``: the action. Both need the permissions."""
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        if not self._allowed(request, button.action):
            raise PermissionDenied
        run = self.get_object(request, unquote(object_id))
        if run is None:
            raise Http404(gettext("No run exists with id %(id)s.") % {"id": object_id})
        back = HttpResponseRedirect(run_url(run.pk, self.admin_site.name))
        if request.method == "GET":
            if run.status in button.statuses:
                return self._button_confirmation(request, run, button)
            self.message_user(
                request, state_error_message(button.refusal(run.pk, run.status)), messages.ERROR
            )
            return back
        try:
            return act(run)
        except RunNotFound as exc:  # deleted meanwhile
            self.message_user(request, str(exc), messages.ERROR)
            changelist = f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist"
            return HttpResponseRedirect(reverse(changelist, current_app=self.admin_site.name))
        except RunStateError as exc:
            self.message_user(request, state_error_message(exc), messages.ERROR)
        except (PendingRunExists, JobNotFound, InvalidTrigger) as exc:
            self.message_user(request, str(exc), messages.ERROR)
        return back

    def _button_confirmation(
        self, request: HttpRequest, run: Run, button: Button
    ) -> TemplateResponse:
        site = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "title": button.label,
            "subtitle": None,
            "opts": self.opts,
            "run": run,
            "short_id": short_id(run.pk),
            "run_url": run_url(run.pk, site),
            "badge": status_badge(run.status),
            "question": button.question,
            "consequence": button.consequence,
            "action": button.action,
            "action_url": self._url(button.action, run.pk),
            # A key per confirmation page: sending it twice retriggers once.
            "idempotency_key": uuid.uuid4().hex if button.keyed else "",
            "media": self.media,
        }
        request.current_app = site
        return TemplateResponse(request, CONFIRMATION_TEMPLATE, context)

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        def act(run: Run) -> HttpResponse:
            result = operations.cancel_run(run.pk, actor=request.user, source=SOURCE)
            if not result.cancelled:
                message, level = gettext("Run %(id)s was already cancelled."), messages.WARNING
            else:
                message, level = gettext("Run %(id)s cancelled."), messages.SUCCESS
                if result.from_status == RunStatus.LEASED:
                    message += " " + gettext("Its worker stops at the next step boundary.")
            self.message_user(request, message % {"id": short_id(run.pk)}, level)
            return HttpResponseRedirect(run_url(run.pk, self.admin_site.name))

        return self._button_view(request, object_id, _BUTTON["cancel"], act)

    def resume_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        def act(run: Run) -> HttpResponse:
            operations.resume_run(run.pk, actor=request.user, source=SOURCE)
            message = gettext(
                "Run %(id)s resumed: it is pending again, and its completed steps will be "
                "replayed, not run again."
            )
            self.message_user(request, message % {"id": short_id(run.pk)}, messages.SUCCESS)
            return HttpResponseRedirect(run_url(run.pk, self.admin_site.name))

        return self._button_view(request, object_id, _BUTTON["resume"], act)

    def retrigger_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        def act(run: Run) -> HttpResponse:
            new_run = operations.retrigger_run(
                run.pk,
                actor=request.user,
                source=SOURCE,
                idempotency_key=request.POST.get("idempotency_key") or None,
            )
            if new_run.disposition == "idempotent":
                text, level = gettext("This run was already retriggered from run"), messages.INFO
            else:
                text, level = gettext("This is a new run, retriggered from run"), messages.SUCCESS
            message = format_html(
                '{} <a href="{}">{}</a>.',
                text,
                run_url(run.pk, self.admin_site.name),
                short_id(run.pk),
            )
            self.message_user(request, message, level)
            return HttpResponseRedirect(run_url(new_run.pk, self.admin_site.name))

        return self._button_view(request, object_id, _BUTTON["retrigger"], act)
