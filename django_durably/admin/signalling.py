"""The run page's Send signal button and its form.

The button (shown for pending, running and waiting runs, to users with ``durably.signal_run`` and
``durably.view_run``) opens a form: the signal's name (the one the run waits for, when it waits for
a signal), a JSON payload and an idempotency key. Posting it calls
:func:`django_durably.waits.send_signal` with ``actor=request.user`` and ``source="admin"``; the
message says whether the signal woke the run, was stored for a later wait, or had already been sent
with that key. A payload that is not JSON, or a value the library refuses, is a form error; a run
that finished meanwhile is the typed error's message on the run's page.

The key field comes filled with a key made for the page, so sending the page twice (a double click,
a reload that resubmits) stores one signal; clearing it sends without a key.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from django_durably.admin.actions import SOURCE, state_error_message
from django_durably.admin.buttons import RunButtonsAdmin
from django_durably.admin.display import run_url, short_id, status_badge, status_word
from django_durably.admin.waits import describe_wait, wait_until
from django_durably.exceptions import InvalidValue, RunNotFound, RunNotWaiting
from django_durably.models import SIGNALLABLE_STATUSES, Run, RunStatus
from django_durably.waits import SignalResult, send_signal

SIGNAL_ACTION = "signal"
SIGNAL_FORM_TEMPLATE = "admin/durably/run/signal_form.html"
MAX_NAME_LENGTH = 255
"""A signal's name and idempotency key, as the ``Signal`` model stores them."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class JSONTextField(forms.CharField):
    """JSON typed as text: empty is ``None``; ``NaN`` and ``Infinity``, which Python's parser
    accepts, are refused as JSON refuses them."""

    default_error_messages = {"invalid": _("Enter valid JSON: %(error)s.")}

    def to_python(self, value: Any) -> Any:
        text = super().to_python(value)
        if not text:
            return None
        try:
            return json.loads(text, parse_constant=_no_constant)
        except ValueError as exc:
            raise ValidationError(
                self.error_messages["invalid"], code="invalid", params={"error": exc}
            ) from exc


class SendSignalForm(forms.Form):
    name = forms.CharField(
        label=_("Signal"),
        max_length=MAX_NAME_LENGTH,
        widget=forms.TextInput(attrs={"size": 45}),
        help_text=_("The name a step waits for: step.wait_for_signal(name)."),
    )
    payload = JSONTextField(
        label=_("Payload"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 6, "cols": 60, "spellcheck": "false"}),
        help_text=_('JSON, such as {"approved": true}; the wait returns it. Empty sends null.'),
    )
    idempotency_key = forms.CharField(
        label=_("Idempotency key"),
        max_length=MAX_NAME_LENGTH,
        required=False,
        widget=forms.TextInput(attrs={"size": 45}),
        help_text=_(
            "A signal sent again with the same key is stored once. Made for this page, so "
            "sending it twice sends one signal; clear it to send without a key."
        ),
    )


def signal_message(result: SignalResult, key: str | None) -> tuple[str, int]:
    """What sending did, in the admin's words, and the message's level."""
    values = {
        "name": result.name,
        "id": short_id(result.run_id),
        "status": status_word(result.run_status),
        "key": key,
    }
    if not result.created:
        text = gettext(
            "Signal '%(name)s' was already sent to run %(id)s with the idempotency key "
            "'%(key)s': it was not stored again."
        )
        return text % values, messages.WARNING
    if result.woke:
        text = gettext("Signal '%(name)s' sent: it woke run %(id)s, which is %(status)s again.")
        return text % values, messages.SUCCESS
    text = gettext(
        "Signal '%(name)s' stored for run %(id)s, which is %(status)s and not waiting for it: "
        "its next wait for '%(name)s' receives it."
    )
    return text % values, messages.SUCCESS


class RunSignalAdmin(RunButtonsAdmin):
    """The Send signal button and form of :class:`~django_durably.admin.runs.RunAdmin`."""

    def has_signal_permission(self, request: HttpRequest, obj: Run | None = None) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.signal_run")

    def get_urls(self) -> list[URLPattern]:
        signal = path(
            f"<path:object_id>/{SIGNAL_ACTION}/",
            self.admin_site.admin_view(self.signal_view),
            name=f"{self.opts.app_label}_{self.opts.model_name}_{SIGNAL_ACTION}",
        )
        return [signal, *super().get_urls()]

    def buttons(self, request: HttpRequest, run: Run) -> list[dict[str, str]]:
        """Send signal first (when the run may receive one), then the others."""
        others = super().buttons(request, run)
        if run.status not in SIGNALLABLE_STATUSES or not self._allowed(request, SIGNAL_ACTION):
            return others
        signal = {
            "action": SIGNAL_ACTION,
            "label": gettext("Send signal"),
            "url": self._url(SIGNAL_ACTION, run.pk),
        }
        return [signal, *others]

    def signal_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """``GET``: the form; ``POST``: send the signal, or the form again with its errors."""
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        if not self._allowed(request, SIGNAL_ACTION):
            raise PermissionDenied
        run = self.get_object(request, unquote(object_id))
        if run is None:
            raise Http404(gettext("No run exists with id %(id)s.") % {"id": object_id})
        back = HttpResponseRedirect(run_url(run.pk, self.admin_site.name))
        if run.status not in SIGNALLABLE_STATUSES:
            refusal = RunNotWaiting(run.pk, run.status)
            self.message_user(request, state_error_message(refusal), messages.ERROR)
            return back
        if request.method == "GET":
            form = SendSignalForm(initial=self._initial(run))
        else:
            form = SendSignalForm(request.POST)
            if form.is_valid():
                sent = self._send(request, run, form)
                if sent is not None:
                    return sent
        return self._signal_form_page(request, run, form)

    def _initial(self, run: Run) -> dict[str, str]:
        """The signal the run waits for, if it does, and a key made for this page."""
        initial = {"idempotency_key": f"admin-{uuid.uuid4().hex}"}
        waiting_for = run.waiting_for
        if (
            run.status == RunStatus.WAITING
            and isinstance(waiting_for, dict)
            and waiting_for.get("kind") == "signal"
        ):
            initial["name"] = str(waiting_for.get("signal") or waiting_for.get("step") or "")
        return initial

    def _send(self, request: HttpRequest, run: Run, form: SendSignalForm) -> HttpResponse | None:
        """Send the form's signal and redirect with what happened; None (and the error on the
        form) when the library refuses a value."""
        key = form.cleaned_data["idempotency_key"] or None
        try:
            result = send_signal(
                run.pk,
                form.cleaned_data["name"],
                form.cleaned_data["payload"],
                idempotency_key=key,
                actor=request.user,
                source=SOURCE,
            )
        except RunNotFound as exc:  # deleted meanwhile
            self.message_user(request, str(exc), messages.ERROR)
            changelist = f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist"
            return HttpResponseRedirect(reverse(changelist, current_app=self.admin_site.name))
        except RunNotWaiting as exc:  # finished meanwhile
            self.message_user(request, state_error_message(exc), messages.ERROR)
        except InvalidValue as exc:
            form.add_error(exc.field if exc.field in form.fields else None, str(exc))
            return None
        else:
            text, level = signal_message(result, key)
            self.message_user(request, text, level)
        return HttpResponseRedirect(run_url(run.pk, self.admin_site.name))

    def _signal_form_page(
        self, request: HttpRequest, run: Run, form: SendSignalForm
    ) -> TemplateResponse:
        site = self.admin_site.name
        wait = None
        if run.status == RunStatus.WAITING:
            wait = describe_wait(run.waiting_for, wait_until(run))
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Send signal"),
            "subtitle": None,
            "opts": self.opts,
            "run": run,
            "short_id": short_id(run.pk),
            "run_url": run_url(run.pk, site),
            "badge": status_badge(run.status),
            "wait": wait,
            "form": form,
            "action": SIGNAL_ACTION,
            "action_url": self._url(SIGNAL_ACTION, run.pk),
            "media": self.media + form.media,
        }
        request.current_app = site
        return TemplateResponse(request, SIGNAL_FORM_TEMPLATE, context)
