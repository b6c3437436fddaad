"""Signals for run and step events. Only definitions live here; handlers live in ``receivers``.

Operator actions (cancel, resume, retrigger, delete) also pass ``actor``, ``source`` and
``from_status`` (the status the run had before the action).

Every signal is sent with ``sender=Run`` (the model class) after the write it describes has committed,
so a receiver that reads the database sees the change. Keyword arguments:

==========================  ==========================================================================
signal                      kwargs
==========================  ==========================================================================
``run_triggered``           ``run``
``run_coalesced``           ``run`` (the pending run a trigger was merged into), ``job_name``,
                            ``concurrency_key``
``run_leased``              ``run_id``, ``job_name``, ``attempt``, ``lease_owner``
``run_completed``           ``run_id``, ``job_name``, ``output``
``run_failed``              ``run_id``, ``job_name``, ``error`` (dict: type, message, traceback)
``run_retry_scheduled``     ``run_id``, ``job_name``, ``attempt`` (the attempt that failed),
                            ``retry_at`` (database time), ``error``, ``outcome`` (``failed``,
                            ``timed_out`` or ``step_retry``), ``step_name`` (a step's retry, else
                            ``None``)
``run_cancelled``           ``run_id``, ``job_name``
``run_waiting``             ``run_id``, ``job_name``, ``step_name``, ``kind`` (``sleep``, ``signal``
                            or ``runs``), ``wake_at`` (database time, or ``None``), ``waiting_for``
``run_woken``               ``run_ids`` (a list), ``reason`` (``timer``, ``signal`` or ``children``)
``signal_sent``             ``run_id``, ``job_name``, ``name``, ``signal_id``, ``created``, ``woke``,
                            ``actor``, ``source``
``run_resumed``             ``run_id``, ``job_name``
``run_retriggered``         ``run_id``, ``job_name``, ``new_run_id``
``run_deleted``             ``run_id``, ``job_name``
``step_started``            ``run_id``, ``step_name``, ``index``, ``attempt``
``step_completed``          ``run_id``, ``step_name``, ``index``, ``output``
``step_failed``             ``run_id``, ``step_name``, ``index``, ``error``, ``step_attempt``
``step_cancelled``          ``run_id``, ``step_name``, ``index``, ``attempt`` (the run was cancelled
                            while the step ran; the step's work is not checkpointed)
``run_progress``            ``run_id``, ``progress`` (dict: current, total, message)
``run_log``                 ``run_id``, ``step_name``, ``level``, ``message``, ``data``
``worker_error``            ``context`` (``claim``, ``lease_renewal``, ``run_completion``,
                            ``run_failure``, ``hand_back``, ``maintenance`` or ``wake``), ``worker_id``,
                            ``run_id`` (or ``None``), ``error`` (dict: type, message)
==========================  ==========================================================================

``worker_error`` is sent at once, from the thread that met the error (there is no write to wait for):
a database error while claiming, renewing leases, recording a run's end or purging old runs, or the
end of a run refused because its lease was lost meanwhile.
"""

from django.dispatch import Signal

run_triggered = Signal()
run_coalesced = Signal()
run_leased = Signal()
run_completed = Signal()
run_failed = Signal()
run_retry_scheduled = Signal()
run_cancelled = Signal()
run_waiting = Signal()
run_woken = Signal()
signal_sent = Signal()
run_resumed = Signal()
run_retriggered = Signal()
run_deleted = Signal()
step_started = Signal()
step_completed = Signal()
step_failed = Signal()
step_cancelled = Signal()
run_progress = Signal()
run_log = Signal()
worker_error = Signal()
