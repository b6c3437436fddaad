"""The Django admin for runs: read-only history; every change goes through ``operations``.

Nobody can add, edit or (with Django's own, unguarded views) delete a run here. Operators act on
runs with the bulk actions and the detail page's buttons, which call :mod:`django_durably.operations`
with ``actor=request.user`` and ``source="admin"``: each change is one guarded UPDATE with its audit
record, and a run that a worker finished meanwhile is reported, never overwritten.

Permissions: ``durably.cancel_run``, ``durably.resume_run`` and ``durably.retrigger_run`` (or
``durably.change_run``, which grants all three) gate the actions and buttons; ``durably.delete_run``
gates the guarded delete action; ``durably.signal_run`` the Send signal form; viewing needs
``durably.view_run``, and so does every action and button. Each action and button asks for
confirmation first (the Send signal form is its own confirmation).

* ``display``: HTML for statuses (one vocabulary: ``leased`` is "Running"), times to the second,
  progress, durations, labels, JSON and errors
* ``filters``: the list filters (status, retrying, job, parent run...), and a change list that
  refuses filter values with NUL characters
* ``inlines``: the read-only attempts, steps, log lines and audit trail of a run
* ``attempts``: a run's attempts and its job's retry policy and timeout, in the admin's words
* ``actions``: the bulk actions and their confirmation pages
* ``buttons``: the run page's buttons and their confirmation pages
* ``waits``: what a waiting run waits for and until when, its parent, child runs and signals
* ``signalling``: the run page's Send signal button and form
* ``runs``, ``audit``: the registered ``ModelAdmin`` classes
"""

from __future__ import annotations

from django_durably.admin.audit import AuditRecordAdmin
from django_durably.admin.runs import RunAdmin

__all__ = ["AuditRecordAdmin", "RunAdmin"]
