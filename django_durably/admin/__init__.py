"""The Django admin for runs: read-only history; every change goes through ``operations``.

Nobody can add, edit or (with Django's own, unguarded views) delete a run here. Operators act on
runs with the bulk actions and the detail page's buttons, which call :mod:`django_durably.operations`
with ``actor=request.user`` and ``source="admin"``: each change is one guarded UPDATE with its audit
record, and a run that a worker finished meanwhile is reported, never overwritten.

Permissions: ``durably.cancel_run``, ``durably.resume_run`` and ``durably.retrigger_run`` (or
``durably.change_run``, which grants all three) gate the actions and buttons; ``durably.delete_run``
gates the guarded delete action; viewing needs ``durably.view_run``.

* ``display``: HTML for statuses, progress, durations, JSON and errors
* ``inlines``: the read-only steps, log lines and audit trail of a run
* ``actions``: the bulk actions and the detail page's buttons
* ``runs``, ``audit``: the registered ``ModelAdmin`` classes
"""

from __future__ import annotations

from django_durably.admin.audit import AuditRecordAdmin
from django_durably.admin.runs import RunAdmin

__all__ = ["AuditRecordAdmin", "RunAdmin"]
