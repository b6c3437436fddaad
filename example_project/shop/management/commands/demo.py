"""``python example_project/manage.py demo``: trigger the shop's jobs, process them, show the runs.

1. ``import_catalog`` runs to completion: many checkpointed steps, progress, logs and an output.
2. ``send_invoices`` meets a (simulated) payment gateway outage half-way and fails. Its completed
   steps are kept.
3. Once the gateway is back, ``resume_run`` puts the failed run back to pending; the next attempt
   replays the checkpointed steps and charges only the invoices that are left.

Everything runs in this process through ``django_durably.process_until_idle()``, the same entry
point a cron job or a serverless function would use. Run with ``-v 2`` to see django-durably's logs.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from django_durably import Run, process_until_idle, resume_run
from shop import gateway
from shop.jobs import import_catalog, send_invoices
from shop.models import Invoice, Product

CUSTOMERS = ["Acme Corp", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries"]
OUTAGE_AFTER_CHARGES = 3


class Command(BaseCommand):
    help = "Run the example jobs of django-durably in this process and print what happened."

    def handle(self, *args: Any, **options: Any) -> None:
        self.configure_logging(options["verbosity"])
        call_command("migrate", verbosity=0, interactive=False)
        suffix = uuid.uuid4().hex[:8]
        self.import_catalog(suffix)
        self.send_invoices(suffix)

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

    # -- 2. a job that fails half-way ----------------------------------------------------------

    def send_invoices(self, suffix: str) -> None:
        self.heading("2. send_invoices: the payment gateway goes down half-way")
        batch = f"demo-{suffix}"
        run = send_invoices.trigger(
            {"batch": batch, "customers": CUSTOMERS},
            idempotency_key=f"invoices-{batch}",
            labels={"tenant": "acme", "source": "demo"},
        )
        self.say(f"triggered run {run.id} ({run.disposition}) for batch {batch!r}")
        self.say(f"simulating a gateway outage after {OUTAGE_AFTER_CHARGES} charges")
        with gateway.outage(after_charges=OUTAGE_AFTER_CHARGES):
            self.say(f"process_until_idle() processed {process_until_idle()} run(s)")
        run = Run.objects.get(pk=run.pk)
        self.show_run(run)
        invoices = Invoice.objects.filter(batch=batch)
        paid = invoices.filter(status=Invoice.Status.PAID).count()
        self.say(f"invoices of batch {batch}: {paid} paid, {invoices.count() - paid} still draft")
        kept = run.steps.filter(status="completed").values_list("name", flat=True)
        if run.status != "failed" or paid != OUTAGE_AFTER_CHARGES:
            raise CommandError(f"send_invoices ended {run.status}, expected failed half-way.")
        self.say(
            f"\nThe run failed half-way and keeps its {len(kept)} completed steps "
            f"({', '.join(kept)})."
        )

        self.heading("3. the gateway is back: resume the failed run")
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
        status = run.status
        styled = self.style.SUCCESS(status) if status == "completed" else self.style.ERROR(status)
        self.say(f"\nrun {run.id}")
        self.field("job", f"{run.job_name} (queue {run.queue})")
        self.field("status", f"{styled}, attempt {run.attempt}")
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
            self.say(f"    {step.index:>2}  {step.name:<{width}}  {step.status}")
        for line in run.logs.all():
            where = f" in {line.step_name}" if line.step_name else ""
            self.field("log", f"[{line.level}{where}] {line.message} {_json(line.data)}")
        if run.output is not None:
            self.field("output", _json(run.output))
        if run.error:
            self.field("error", f"{run.error['type']}: {run.error['message']}")

    def field(self, name: str, value: str) -> None:
        self.say(f"  {name:<9} {value}")


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
