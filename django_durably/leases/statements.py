"""The hand-written PostgreSQL statements of the hot paths, each beside the ORM expression it restates.

Trigger, claim, checkpoint, finish and the cancel check run for every run or step, so on PostgreSQL
they are single prepared statements (``cursor_for``). What they decide must not drift from the ORM
that SQLite and the rest of the package use, so each predicate and field set exists once per form,
here, side by side, and ``tests/integration/leases/test_statements.py`` applies both forms to the same rows
and checks that they agree:

* the lease holder's guard: :meth:`~django_durably.models.RunQuerySet.held_by` and
  :data:`HELD_BY_SQL`;
* what a claim writes: :func:`lease_fields` and :data:`LEASE_SET_SQL`;
* what ending a run writes: :func:`ended_fields`, :func:`retry_fields` and the ``SET`` of
  :data:`FINISH_SQL`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Case, DateTimeField, ExpressionWrapper, F, Q, Value, When
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Coalesce

from django_durably.models import DatabaseNow, RunStatus
from django_durably.serialization import dump


def cursor_for(alias: str) -> Any:
    """A cursor for these statements: server-side binding, prepared (see ``postgres``)."""
    from django_durably.postgres import bound_cursor  # psycopg is only there with PostgreSQL

    return bound_cursor(alias)


def jsonb(value: Any) -> str | None:
    """A parameter for ``%s::jsonb``: ``None`` is stored as SQL NULL, as the ORM stores it."""
    return None if value is None else dump(value)


def lease_expiry(seconds: float) -> ExpressionWrapper[CombinedExpression]:
    """``now + seconds`` by the database clock."""
    return ExpressionWrapper(
        DatabaseNow() + Value(timedelta(seconds=seconds)), output_field=DateTimeField()
    )


# -- the lease holder's guard --------------------------------------------------------------------

# ``RunQuerySet.held_by(run_id, generation)``: still leased, under this generation. The
# parameter is the generation (or, in a join, the column holding it: ``{generation}``).
HELD_BY_SQL = "run.status = 'leased' AND run.lease_generation = {generation}"


# -- what a claim writes -------------------------------------------------------------------------


def lease_fields(worker_id: str, seconds: float) -> dict[str, Any]:
    """The ``UPDATE`` of a claim, for the ORM (SQLite)."""
    return {
        "status": RunStatus.LEASED,
        "lease_generation": F("lease_generation") + 1,
        "attempt": F("attempt") + 1,
        "attempt_started_at": DatabaseNow(),
        # Reclaiming a lease its worker stopped renewing: that attempt counts (handed-back runs,
        # whose owner is cleared, do not). Every expression here reads the row as it was.
        "failed_attempts": F("failed_attempts")
        + Case(When(Q(status=RunStatus.LEASED) & ~Q(lease_owner=""), then=1), default=0),
        "lease_owner": worker_id,
        "lease_expires_at": lease_expiry(seconds),
        "started_at": Coalesce(F("started_at"), DatabaseNow()),
        "updated_at": DatabaseNow(),
    }


# The same, for the hand-written claims (parameters: the owner, the lease in seconds). Both
# claiming statements return the row they wrote (``RETURNING``), so the fencing token a worker
# holds is the one its claim wrote: a worker paused after its claim commits must not pick up a
# generation written by a later claim.
LEASE_SET_SQL = """
    status = 'leased',
    lease_generation = run.lease_generation + 1,
    attempt = run.attempt + 1,
    attempt_started_at = statement_timestamp(),
    failed_attempts = run.failed_attempts
        + CASE WHEN run.status = 'leased' AND run.lease_owner <> '' THEN 1 ELSE 0 END,
    lease_owner = %s,
    lease_expires_at = statement_timestamp() + make_interval(secs => %s),
    started_at = COALESCE(run.started_at, statement_timestamp()),
    updated_at = statement_timestamp()
"""


# -- what ending a run writes ----------------------------------------------------------------------


def ended_fields(status: str) -> dict[str, Any]:
    """The ``UPDATE`` that ends a run with ``status`` (completed, failed or cancelled), for the ORM:
    the lease worker's end on SQLite and an operator's cancel everywhere. The output or error is
    the caller's to add."""
    return {
        "status": status,
        "completed_at": DatabaseNow(),
        "lease_expires_at": None,
        "retry_at": None,
        "wake_at": None,
        "waiting_for": None,
        "updated_at": DatabaseNow(),
    }


# Ending attempts on PostgreSQL: one statement for any number of runs (a worker records the runs
# its slots finished together), each row guarded by its own generation. An ending's ``status`` is
# where the run goes: ``completed`` (``value`` is the output), ``failed`` (``value`` is the error)
# or ``pending`` (a retry: ``value`` is the error, due ``delay`` seconds from now by the database
# clock). ``counted`` adds to ``failed_attempts``; ``bump`` to the generation (an attempt ended on
# time: its thread may still be running, and must be fenced out for good). The ``SET`` restates
# ``ended_fields`` and ``retry_fields``. Returns each run recorded with its ``retry_at``.
_FINISH_UPDATE = (
    """
UPDATE durably_run run SET
    status = ending.status,
    output = CASE WHEN ending.status = 'completed' THEN ending.value ELSE run.output END,
    error = CASE WHEN ending.status = 'completed' THEN run.error ELSE ending.value END,
    completed_at = CASE WHEN ending.status = 'pending' THEN NULL ELSE statement_timestamp() END,
    run_after = CASE WHEN ending.status = 'pending'
        THEN statement_timestamp() + make_interval(secs => ending.delay)
        ELSE run.run_after END,
    retry_at = CASE WHEN ending.status = 'pending'
        THEN statement_timestamp() + make_interval(secs => ending.delay) END,
    failed_attempts = run.failed_attempts + ending.counted,
    lease_generation = run.lease_generation + ending.bump,
    lease_expires_at = NULL,
    wake_at = NULL,
    waiting_for = NULL,
    updated_at = statement_timestamp()
FROM (VALUES {rows}) AS ending (id, generation, status, outcome, value, delay, counted, bump)
WHERE run.id = ending.id AND """  # noqa: S608 - constants only
    + HELD_BY_SQL.format(generation="ending.generation")
    + """
RETURNING run.id, run.retry_at"""
)

# The common case, every attempt completing its run: the update alone. A completed run is its last
# attempt's record (``Run.attempt_history``), so this end inserts nothing.
FINISH_SQL = _FINISH_UPDATE

# Some attempts ending otherwise (failed, retried, timed out): the same update, and their history
# rows inserted by the same statement, so the history never disagrees with the run.
FINISH_RECORDING_SQL = (
    "WITH ended AS ("  # noqa: S608 - constants only
    + _FINISH_UPDATE
    + """, run.attempt, run.lease_owner, run.attempt_started_at, ending.outcome, ending.value
), recorded AS (
    INSERT INTO durably_runattempt
        (run_id, number, worker, started_at, ended_at, outcome, error, retry_at)
    SELECT id, attempt, lease_owner, attempt_started_at, statement_timestamp(), outcome, value,
        retry_at
    FROM ended WHERE outcome <> 'completed'
)
SELECT id, retry_at FROM ended
"""
)
FINISH_ROW = "(%s::uuid, %s::bigint, %s, %s, %s::jsonb, %s::float8, %s::integer, %s::bigint)"


def retry_fields(delay: float) -> dict[str, Any]:
    """What a retry writes besides the error, for the ORM (SQLite): pending again, due ``delay``
    seconds from now by the database clock, the lease cleared."""
    due = lease_expiry(delay)
    return {
        "status": RunStatus.PENDING,
        "run_after": due,
        "retry_at": due,
        "completed_at": None,
        "lease_expires_at": None,
        "wake_at": None,
        "waiting_for": None,
        "updated_at": DatabaseNow(),
    }


# SQLite's clock as ``models.DatabaseNow`` writes it (escaped for a statement with parameters).
SQLITE_NOW = "(STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'NOW') || '000')"

# The attempt history row of a run's current attempt, from the run's own columns (the ended time,
# then the parameters: the worker if not the run's owner, outcome, error, and the run id), returning when the run is due again if it
# goes back to pending (SQLite has ``RETURNING`` since 3.35).
RECORD_ATTEMPT_SQL = """
INSERT INTO durably_runattempt (run_id, number, worker, started_at, ended_at, outcome, error, retry_at)
SELECT id, attempt, COALESCE(%s, lease_owner), attempt_started_at, {now}, %s, {error}, retry_at
FROM durably_run WHERE id = %s
RETURNING retry_at
"""


# -- a completed step --------------------------------------------------------------------------------

# The guarded counter update and the step's insert in one statement (one round trip, one
# transaction). No row inserted means the guard refused. Parameters: the next step index, the run,
# the generation, then the step's index, name, attempt, step attempt, output, started and completed
# times.
PERSIST_STEP_SQL = (
    """
WITH held AS (
    UPDATE durably_run run SET
        current_step_index = %s,
        completed_step_count = run.completed_step_count + 1,
        updated_at = statement_timestamp()
    WHERE run.id = %s AND """
    + HELD_BY_SQL.format(generation="%s")
    + """
    RETURNING run.id
)
INSERT INTO durably_step
    (run_id, "index", name, status, attempt, step_attempt, output, error, started_at, completed_at)
SELECT id, %s, %s, 'completed', %s, %s, %s::jsonb, NULL, %s, %s FROM held
RETURNING id
"""
)


# -- the cancel check ------------------------------------------------------------------------------

# What a step boundary asks when no listener delivers cancels (``holding.probe``).
PROBE_SQL = "SELECT status, lease_generation FROM durably_run WHERE id = %s"


# -- inserting runs ----------------------------------------------------------------------------------

# Every column of ``durably_run`` but ``created_at`` and ``updated_at`` (their defaults, the
# database clock), with the values a new pending run has; one row per element of the arrays. The
# wake-up is sent from the same statement, once per queue, so it is one round trip and its own
# transaction when the trigger is not inside one. ``run_after`` NULL means now, as its default.
# The always-true WHERE is what runs the notifications, once (PostgreSQL skips a plain CTE that
# nothing reads, and keeps a volatile call such as ``pg_notify`` in a subquery).
INSERT_RUNS_SQL = """
WITH created AS (
    INSERT INTO durably_run (
        id, job_name, queue, priority, status, input, output, error, idempotency_key,
        concurrency_key, labels, progress, run_after, attempt, failed_attempts,
        attempt_started_at, retry_at, wake_at, waiting_for, parent_id, current_step_index,
        completed_step_count, lease_owner, lease_expires_at, lease_generation, started_at,
        completed_at
    )
    SELECT
        item.id, %s, item.queue, item.priority, 'pending', item.input::jsonb, NULL, NULL,
        item.idempotency_key, item.concurrency_key, item.labels::jsonb, NULL,
        COALESCE(item.run_after, STATEMENT_TIMESTAMP()), 0, 0, NULL, NULL, NULL, NULL,
        item.parent_id, 0, 0, '', NULL, 0, NULL, NULL
    FROM unnest(
        %s::uuid[], %s::text[], %s::integer[], %s::text[], %s::text[], %s::text[], %s::text[],
        %s::timestamptz[], %s::uuid[]
    ) AS item(
        id, queue, priority, input, idempotency_key, concurrency_key, labels, run_after, parent_id
    )
    RETURNING id, run_after, created_at, updated_at, queue
)
SELECT id, run_after, created_at, updated_at FROM created
WHERE (
    SELECT count(*) FROM (
        SELECT pg_notify(%s, queue) FROM (SELECT DISTINCT queue FROM created) AS queues
    ) AS woken
) >= 0
"""


# -- claiming --------------------------------------------------------------------------------------

# The common case, in one statement and one round trip: lease the ready runs that come before the
# first run with a concurrency key, in claim order. Runs with a key need an advisory lock and a
# fresh re-check in a transaction of their own (``claims._claim_serialising_keys``), so when one
# is among the candidates (``keyed_waiting``) the claim goes on with that path. The flag comes back
# even when nothing was claimed (one row of NULLs beside it), so an empty claim with no keyed
# candidate is one round trip, not two transactions. The LIMIT is a literal (see DESIGN.md section 4). The candidates are those of
# ``RunQuerySet.ready()`` without a busy key, in its order (``claims._candidates``); a test
# compares the two on the same data.
CLAIM_UNTIL_A_KEY_SQL = """
WITH pending AS (
    SELECT id, concurrency_key, priority, run_after, NULL AS lost_owner,
           NULL::integer AS lost_attempt, NULL::timestamptz AS lost_started,
           NULL::timestamptz AS lost_at
    FROM durably_run
    WHERE status = 'pending' AND run_after <= statement_timestamp() {queue_filter}
      AND (concurrency_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM durably_run busy
          WHERE busy.concurrency_key = durably_run.concurrency_key
            AND busy.status = 'leased' AND busy.lease_expires_at > statement_timestamp()))
    ORDER BY priority DESC, run_after, id
    LIMIT {limit} FOR UPDATE SKIP LOCKED
), expired AS (
    SELECT id, concurrency_key, priority, run_after, lease_owner AS lost_owner,
           attempt AS lost_attempt, attempt_started_at AS lost_started,
           lease_expires_at AS lost_at
    FROM durably_run
    WHERE status = 'leased' AND lease_expires_at <= statement_timestamp() {queue_filter}
      AND (concurrency_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM durably_run busy
          WHERE busy.concurrency_key = durably_run.concurrency_key AND busy.id <> durably_run.id
            AND busy.status = 'leased' AND busy.lease_expires_at > statement_timestamp()))
    ORDER BY priority DESC, run_after, id
    LIMIT {limit} FOR UPDATE SKIP LOCKED
), ranked AS (
    SELECT id, concurrency_key, lost_owner, lost_attempt, lost_started, lost_at,
           row_number() OVER (ORDER BY priority DESC, run_after, id) AS position
    FROM (SELECT * FROM pending UNION ALL SELECT * FROM expired) candidates
), first_keyed AS (
    SELECT min(position) AS position FROM ranked WHERE concurrency_key IS NOT NULL
), picked AS (
    SELECT * FROM ranked
    WHERE position <= {limit}
      AND position < COALESCE((SELECT position FROM first_keyed), {limit} + 1)
), claimed AS (
    UPDATE durably_run run SET {lease_set}
    FROM picked
    WHERE run.id = picked.id
    RETURNING {columns}, picked.lost_owner, picked.lost_attempt, picked.lost_started, picked.lost_at
){record_lost}
SELECT {names}, waiting.keyed_waiting
FROM (SELECT (SELECT position IS NOT NULL FROM first_keyed) AS keyed_waiting) AS waiting
LEFT JOIN claimed ON true
"""

# Leasing the runs the keyed claim chose and locked, returning what the claim wrote.
LEASE_CHOSEN_SQL = """
WITH chosen AS (
    SELECT id, CASE WHEN status = 'leased' THEN lease_owner END AS lost_owner,
           attempt AS lost_attempt, attempt_started_at AS lost_started, lease_expires_at AS lost_at
    FROM durably_run WHERE id = ANY(%s)
), claimed AS (
    UPDATE durably_run run SET {lease_set}
    FROM chosen
    WHERE run.id = chosen.id
    RETURNING {columns}, chosen.lost_owner, chosen.lost_attempt, chosen.lost_started, chosen.lost_at
){record_lost}
SELECT {names} FROM claimed
"""

# Both claims: the history row of each attempt whose worker was lost (a reclaimed lease whose owner
# had not handed it back), written by the claim that found it. Parameter: the error recorded.
RECORD_LOST_SQL = """, lost AS (
    INSERT INTO durably_runattempt
        (run_id, number, worker, started_at, ended_at, outcome, error, retry_at)
    SELECT id, lost_attempt, lost_owner, lost_started, lost_at, 'lost', %s::jsonb, NULL
    FROM claimed WHERE lost_owner <> ''
)"""

KEY_LOCK_SQL = "SELECT pg_try_advisory_xact_lock(%s)"


# -- waking waiting runs -----------------------------------------------------------------------------


def woken_fields() -> dict[str, Any]:
    """A waiting run made pending again, due now, for the ORM (SQLite, and operations); its
    ``waiting_for`` stays until the wait returns. :data:`WOKEN_SET_SQL` restates it."""
    return {
        "status": RunStatus.PENDING,
        "run_after": DatabaseNow(),
        "wake_at": None,
        "updated_at": DatabaseNow(),
    }


# The same, for the hand-written wake-ups below.
WOKEN_SET_SQL = """
        status = 'pending',
        run_after = statement_timestamp(),
        wake_at = NULL,
        updated_at = statement_timestamp()
"""

# The look for due timers (``RunQuerySet.due_to_wake()``), prepared with the status a literal so that
# its generic plan, too, reads the partial index ``durably_run_waking_idx``; the LIMIT a literal.
DUE_TO_WAKE_SQL = """
SELECT id FROM durably_run
WHERE status = 'waiting' AND wake_at <= statement_timestamp()
ORDER BY wake_at
LIMIT {limit}
"""

# The due runs ``waiting.wake_due`` found (``RunQuerySet.due_to_wake()``, index-driven) made pending
# (:func:`woken_fields`), each still guarded by its status and timer, and the workers of their
# queues woken by the same statement (as ``INSERT_RUNS_SQL`` does). Parameters: the run ids, the
# channel.
WAKE_DUE_SQL = (
    "\nWITH woken AS (\n    UPDATE durably_run run SET"  # noqa: S608 - constants only
    + WOKEN_SET_SQL
    + """    WHERE run.id = ANY(%s) AND run.status = 'waiting' AND run.wake_at <= statement_timestamp()
    RETURNING run.id, run.queue
)
SELECT id FROM woken
WHERE (
    SELECT count(*) FROM (
        SELECT pg_notify(%s, queue) FROM (SELECT DISTINCT queue FROM woken) AS queues
    ) AS notified
) >= 0
"""
)

# A child's end, on PostgreSQL (``waiting._wake_parent``): first the parent locked whatever its
# status, and read as it is once the lock is granted (``FOR UPDATE`` waits for a parent settling its
# wait, then returns what it wrote); parameter: the parent.
LOCK_PARENT_SQL = """
SELECT status, waiting_for, queue FROM durably_run
WHERE id = %s AND status NOT IN ('completed', 'failed', 'cancelled')
FOR UPDATE
"""

# Then, with a fresh snapshot (every child's end committed before this child's is seen), the parent
# made pending if one of the children it waits for failed or was cancelled, or none is unfinished,
# and its queue's workers woken. Parameters: the parent, the children (twice), the channel.
WAKE_PARENT_SQL = (
    "\nWITH woken AS (\n    UPDATE durably_run run SET"  # noqa: S608 - constants only
    + WOKEN_SET_SQL
    + """    WHERE run.id = %s AND run.status = 'waiting' AND (
        EXISTS (
            SELECT 1 FROM durably_run child
            WHERE child.id = ANY(%s) AND child.status IN ('failed', 'cancelled'))
        OR NOT EXISTS (
            SELECT 1 FROM durably_run child
            WHERE child.id = ANY(%s) AND child.status NOT IN ('completed', 'failed', 'cancelled'))
    )
    RETURNING run.queue
)
SELECT pg_notify(%s, queue) FROM woken
"""
)
