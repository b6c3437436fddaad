"""``python example_project/manage.py demo``: trigger the shop's jobs, process them, show the runs.

1. ``import_catalog`` runs to completion: many checkpointed steps, progress, logs and an output.
2. ``send_invoices`` meets a bad day at the (simulated) payment gateway. A hiccup is retried
   within the charge step, waiting in place; an outage outlasts the step's tries, so the attempt
   fails and the run's retry policy schedules another attempt, which replays the invoices already
   charged. Then a declined card raises ``NonRetryable``: the run fails at once, with attempts left.
3. Once the customer has updated their card, ``resume_run`` puts the failed run back to pending; the
   next attempt replays the checkpointed steps and charges only the invoices that are left.
4. ``place_order`` reserves stock, then waits for the payment provider's ``payment-confirmed``
   signal, holding no worker. One order's payment is confirmed (twice, as webhooks are delivered)
   with ``send_signal`` and it ships; the other is never paid, so its wait times out after a few
   seconds and the order is cancelled, its stock released.

Everything runs in this process through ``django_durably.process_until_idle()``, the same entry
point a cron job or a serverless function would use. Run with ``-v 2`` to see django-durably's logs.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from django_durably import Run, process_until_idle, resume_run
from shop import gateway
from shop.jobs import confirm_payment, import_catalog, place_order, send_invoices
from shop.models import Invoice, Order, Product

CUSTOMERS = ["Acme Corp", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries"]
# The gateway's bad day, by call number (1 is the first charge): calls 2 and 3 answer 503 (a hiccup:
# Globex's charge succeeds on its third try), calls 5 to 7 too (an outage: Initech's charge gives up
# after three tries, and so does the run's first attempt), and Umbrella's card is declined.
HICCUP_CALLS = {2, 3}
OUTAGE_CALLS = {5, 6, 7}
DECLINED = "Umbrella"
# The unpaid order's payment window: seconds, so that the demo sees its wait time out.
UNPAID_WINDOW = timedelta(seconds=3)


class Command(BaseCommand):
    help = "Run the example jobs of django-durably in this process and print what happened."

    def handle(self, *args: Any, **options: Any) -> None:
        self.configure_logging(options["verbosity"])
        call_command("migrate", verbosity=0, interactive=False)
        suffix = uuid.uuid4().hex[:8]
        self.import_catalog(suffix)
        self.send_invoices(suffix)
        self.place_orders(suffix)

    # -- 1. a job that completes ---------------------------------------------------------------

    def import_catalog(self, suffix: str) -> None:
        self.heading("1. import_catalog: a checkpointed import")
        key = f"catalog-acme-{suffix}"
        run = import_catalog.trigger(
            {"supplier": "acme", "products": 120, "chunk_size": 25},
            idempotency_key=key,
            labels={"tenant": "acme", "source": "demo"},
        )
        self.say(f"triggered run {run.id} ({run.disposition}), idempotency key {key!r}")
        again = import_catalog.trigger(
            {"supplier": "acme", "products": 120, "chunk_size": 25}, idempotency_key=key
        )
        self.say(f"triggered again with the same key: run {again.id} ({again.disposition})")
        self.say(f"process_until_idle() processed {process_until_idle()} run(s)")
        run = Run.objects.get(pk=run.pk)
        self.show_run(run)
        tenant_runs = Run.objects.with_labels(tenant="acme").count()
        self.say(f"products in the shop: {Product.objects.count()} (upserted by SKU)")
        self.say(f"runs labelled tenant=acme in the database: {tenant_runs}")
        if run.status != "completed":
            raise CommandError(f"import_catalog ended {run.status}, expected completed.")

    # -- 2. a job that is retried, then fails half-way ----------------------------------------

    def send_invoices(self, suffix: str) -> None:
        self.heading("2. send_invoices: a bad day at the payment gateway")
        batch = f"demo-{suffix}"
        run = send_invoices.trigger(
            {"batch": batch, "customers": CUSTOMERS},
            idempotency_key=f"invoices-{batch}",
            labels={"tenant": "acme", "source": "demo"},
        )
        self.say(f"triggered run {run.id} ({run.disposition}) for batch {batch!r}")
        self.say(
            f"the gateway will answer 503 to calls {_calls(HICCUP_CALLS)} (a hiccup) and "
            f"{_calls(OUTAGE_CALLS)} (an outage),\nand decline the card of {DECLINED}"
        )
        with gateway.trouble(unavailable_calls=HICCUP_CALLS | OUTAGE_CALLS, declined={DECLINED}):
            self.say(f"process_until_idle() processed {process_until_idle()} run(s)")
            run = Run.objects.get(pk=run.pk)
            self.show_run(run)
            if run.status != "pending" or run.retry_at is None:
                raise CommandError(f"send_invoices ended {run.status}, expected a retry.")
            self.say(
                "\nThe hiccup was retried within its step, waiting in place. The outage outlasted "
                "the step's three\ntries, so attempt 1 failed and the job's retry policy put the "
                "run back to pending."
            )
            self.wait_until(run.retry_at, "the retry")
        run = Run.objects.get(pk=run.pk)
        self.show_run(run)
        invoices = Invoice.objects.filter(batch=batch)
        paid = invoices.filter(status=Invoice.Status.PAID).count()
        self.say(f"invoices of batch {batch}: {paid} paid, {invoices.count() - paid} still draft")
        kept = list(run.steps.filter(status="completed").values_list("name", flat=True))
        if run.status != "failed" or run.attempt != 2 or paid != CUSTOMERS.index(DECLINED):
            raise CommandError(f"send_invoices ended {run.status}, expected failed half-way.")
        self.say(
            f"\nAttempt 2 replayed the charged invoices, charged {CUSTOMERS[2]} at the first try, "
            f"then {DECLINED}'s card\nwas declined: NonRetryable fails the run at once, with "
            f"attempts left. It keeps its {len(kept)} completed steps."
        )

        self.heading("3. the customer has updated their card: resume the failed run")
        result = resume_run(run.pk, actor="demo")
        self.say(f"resume_run() moved run {run.id} from {result.from_status} back to pending")
        self.say(f"process_until_idle() processed {process_until_idle()} run(s)")
        run = Run.objects.get(pk=run.pk)
        self.show_run(run)
        paid = Invoice.objects.filter(batch=batch, status=Invoice.Status.PAID).count()
        self.say(
            f"invoices of batch {batch}: {paid} paid. The resumed attempt replayed the "
            f"{len(kept)} checkpointed steps\nand charged only the invoices that were left."
        )
        if run.status != "completed" or paid != len(CUSTOMERS):
            raise CommandError(f"the resumed send_invoices ended {run.status}, expected completed.")

    # -- 4. a job that waits for a signal -----------------------------------------------------

    def place_orders(self, suffix: str) -> None:
        self.heading("4. place_order: orders that wait for their payment")
        # The imported product with the most units left (each demo ships some).
        product = Product.objects.filter(supplier="acme").order_by("-stock", "sku").first()
        if product is None or product.stock < 3:
            raise CommandError("no acme product has 3 units in stock left for the orders.")
        paid, unpaid = f"ORD-{suffix}-1", f"ORD-{suffix}-2"
        paid_run = place_order.trigger(
            {"number": paid, "customer": "Ada", "sku": product.sku, "quantity": 2},
            idempotency_key=f"order-{paid}",
            labels={"tenant": "acme", "source": "demo"},
        )
        unpaid_run = place_order.trigger(
            {
                "number": unpaid,
                "customer": "Bob",
                "sku": product.sku,
                "quantity": 1,
                "payment_window": UNPAID_WINDOW,
            },
            idempotency_key=f"order-{unpaid}",
            labels={"tenant": "acme", "source": "demo"},
        )
        self.say(
            f"triggered run {paid_run.id} for order {paid} (2 x {product.sku}, a day to pay)\n"
            f"triggered run {unpaid_run.id} for order {unpaid} (1 x {product.sku}, "
            f"{UNPAID_WINDOW.total_seconds():g} seconds to pay)"
        )
        self.say(f"process_until_idle() processed {process_until_idle()} run(s)")
        paid_run = Run.objects.get(pk=paid_run.pk)
        self.show_run(paid_run)
        self.say(f"{product.sku} in stock: {self.stock(product)} (3 units reserved)")
        waiting = Run.objects.filter(pk__in=[paid_run.pk, unpaid_run.pk]).waiting().count()
        if waiting != 2:
            raise CommandError(f"{waiting} of the 2 place_order runs wait, expected both.")
        self.say(
            "\nBoth runs wait for the signal 'payment-confirmed', holding no worker and no lease, "
            "so\nprocess_until_idle() returned. The payment provider's webhook confirms the "
            f"payment of order\n{paid}, and delivers it twice, as webhooks can."
        )
        for _ in range(2):
            result = confirm_payment(paid, payment_ref=f"pay_{suffix}")
            self.say(
                f"send_signal(): signal {result.signal_id}, created={result.created}, "
                f"woke={result.woke}, run {result.run_status}"
            )
        self.say(f"process_until_idle() processed {process_until_idle()} run(s)")
        paid_run = Run.objects.get(pk=paid_run.pk)
        self.show_run(paid_run)
        if paid_run.status != "completed" or paid_run.output["status"] != "shipped":
            raise CommandError(f"the paid order's run ended {paid_run.status}, expected shipped.")
        self.say(
            "\nWoken by the signal, the run replayed 'reserve' from its checkpoint, the wait "
            "returned the signal's payload\nand the order shipped. Nobody pays for order "
            f"{unpaid}: its wait times out."
        )
        unpaid_run = Run.objects.get(pk=unpaid_run.pk)
        self.wait_until(unpaid_run.wake_at, "the payment window to close")
        unpaid_run = Run.objects.get(pk=unpaid_run.pk)
        self.show_run(unpaid_run)
        orders = ", ".join(
            f"{order.number} {order.status}"
            for order in Order.objects.filter(number__in=[paid, unpaid])
        )
        self.say(f"orders: {orders}; {product.sku} in stock: {self.stock(product)}")
        if unpaid_run.status != "completed" or unpaid_run.output["status"] != "cancelled":
            raise CommandError(
                f"the unpaid order's run ended {unpaid_run.status}, expected cancelled."
            )
        self.say(
            "\nThe wait raised SignalTimeout inside the job, which caught it, released the "
            "stock and cancelled the order."
        )

    def stock(self, product: Product) -> int:
        return Product.objects.values_list("stock", flat=True).get(pk=product.pk)

    def wait_until(self, due: datetime | None, what: str) -> None:
        """Wait until a run is due (a retry's ``retry_at``, a wait's ``wake_at``: database clock),
        then process it."""
        if due is None:
            raise CommandError(f"nothing to wait for: {what} has no due time.")
        delay = max((due - timezone.now()).total_seconds(), 0.0)
        self.say(f"\nwaiting {delay:.1f}s for {what} (process_until_idle() does not wait)")
        time.sleep(delay)
        deadline = time.monotonic() + 10
        while (processed := process_until_idle()) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # the database clock may be a hair behind this one
        self.say(f"process_until_idle() processed {processed} run(s)")

    # -- output --------------------------------------------------------------------------------

    def configure_logging(self, verbosity: int) -> None:
        """Quiet by default (this command prints its own report); ``-v 2`` shows the library's
        log lines: step.log lines, one line per run outcome, failed runs with their traceback."""
        logger = logging.getLogger("django_durably")
        if verbosity < 2:
            logger.setLevel(logging.CRITICAL)
            return
        handler = logging.StreamHandler(self.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False

    def heading(self, text: str) -> None:
        self.stdout.write("\n" + self.style.MIGRATE_HEADING(text))

    def say(self, text: str) -> None:
        self.stdout.write(text)

    def show_run(self, run: Run) -> None:
        self.say(f"\nrun {run.id}")
        self.field("job", f"{run.job_name} (queue {run.queue})")
        state = f"{self.styled(run.status)}, attempt {run.attempt}"
        if run.retry_at is not None:
            state += f", retrying at {_time(run.retry_at)}"
        self.field("status", state)
        if run.status == "waiting":
            self.field("waiting", _json(run.waiting_for))
        self.field("labels", _json(run.labels))
        if run.progress:
            progress = run.progress
            self.field(
                "progress", f"{progress['current']:g}/{progress['total']:g} {progress['message']}"
            )
        steps = list(run.steps.all())
        self.field("steps", f"{len(steps)} ({run.completed_step_count} completed)")
        width = max((len(step.name) for step in steps), default=0)
        for step in steps:
            self.say(
                f"    {step.index:>2}  {step.name:<{width}}  {step.status:<9}  "
                f"attempt {step.attempt}, try {step.step_attempt}"
            )
        for attempt in run.attempt_history():
            text = f"{attempt.number} {attempt.outcome}"
            if attempt.error:
                text += f": {_short(attempt.error['type'])}: {attempt.error['message']}"
            if attempt.retry_at is not None:
                text += f"; retry at {_time(attempt.retry_at)}"
            self.field("attempt", text)
        for line in run.logs.all():
            where = f" in {line.step_name}" if line.step_name else ""
            self.field("log", f"[{line.level}{where}] {line.message} {_json(line.data)}")
        if run.output is not None:
            self.field("output", _json(run.output))
        if run.error:
            self.field("error", f"{run.error['type']}: {run.error['message']}")

    def styled(self, status: str) -> str:
        if status == "completed":
            return self.style.SUCCESS(status)
        if status in ("pending", "waiting"):  # not finished: it will go on
            return self.style.WARNING(status)
        return self.style.ERROR(status)

    def field(self, name: str, value: str) -> None:
        self.say(f"  {name:<9} {value}")


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _time(moment: datetime) -> str:
    """``01:27:50.139 UTC``: retries are due within seconds in this demo."""
    return f"{moment:%H:%M:%S}.{moment.microsecond // 1000:03d} {moment.tzname()}"


def _short(class_path: str) -> str:
    return class_path.rpartition(".")[2]


def _calls(numbers: set[int]) -> str:
    low, high = min(numbers), max(numbers)
    return f"{low} and {high}" if high == low + 1 else f"{low} to {high}"
