"""The shop's durable jobs. django-durably imports this module at startup (``<app>.jobs``).

Each ``step.run(name, fn, ...)`` is a checkpoint: once a step completed, a later attempt of the same
run returns its stored output instead of calling ``fn`` again. Step functions below are idempotent
(upserts, gateway idempotency keys), because a worker can die after ``fn`` returns but before the
checkpoint is written, and then the step runs once more. That also makes them safe to retry:
``send_invoices`` retries a charge the gateway could not take, and the whole run after an outage.
``place_order`` waits durably, holding no worker, for the payment provider to confirm a payment.
"""

from __future__ import annotations

import zlib
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone
from pydantic import BaseModel, Field

from django_durably import (
    NonRetryable,
    Retry,
    SignalResult,
    SignalTimeout,
    StepContext,
    current_context,
    job,
    send_signal,
)
from shop import gateway
from shop.models import Invoice, Order, Product

CATEGORIES = ("kitchen", "garden", "office", "toys", "outdoor")
ADJECTIVES = ("Classic", "Compact", "Deluxe", "Eco", "Pro", "Travel")
NOUNS = ("Kettle", "Lamp", "Chair", "Planter", "Notebook", "Backpack", "Puzzle")


# -- import_catalog ----------------------------------------------------------------------------


class CatalogImport(BaseModel):
    """Input of ``import_catalog``: validated when the run is triggered, stored as JSON."""

    supplier: str = Field(pattern=r"^[a-z0-9-]{1,40}$")
    products: int = Field(default=120, ge=1, le=5000)
    chunk_size: int = Field(default=25, ge=1, le=500)


class CatalogImportResult(BaseModel):
    supplier: str
    imported: int
    chunks: int


def fetch_feed(supplier: str, count: int) -> list[dict[str, Any]]:
    """Download the supplier's product feed (generated here, deterministically, instead)."""
    feed = [
        {
            "sku": f"{supplier.upper()}-{n:05d}",
            "name": f"{ADJECTIVES[n % len(ADJECTIVES)]} {NOUNS[n % len(NOUNS)]}",
            "category": CATEGORIES[n % len(CATEGORIES)],
            "price_cents": 499 + (n * 137) % 9500,
        }
        for n in range(1, count + 1)
    ]
    # Code deep in a call stack reaches the running job through current_context().
    current_context().log.info("fetched supplier feed", supplier=supplier, products=len(feed))
    return feed


def save_products(supplier: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Upsert one chunk of the feed; safe to run twice."""
    created = 0
    with transaction.atomic():
        for row in rows:
            _, was_created = Product.objects.update_or_create(
                sku=row["sku"],
                defaults={
                    "supplier": supplier,
                    "name": row["name"],
                    "category": row["category"],
                    "price_cents": row["price_cents"],
                },
            )
            created += was_created
    return {
        "saved": len(rows),
        "created": created,
        "first": rows[0]["sku"],
        "last": rows[-1]["sku"],
    }


@job(
    name="shop.import_catalog",
    queue="imports",
    # One import per supplier at a time: runs sharing a concurrency key never overlap.
    concurrency_key=lambda request: f"catalog:{request.supplier}",
)
def import_catalog(step: StepContext, input: CatalogImport) -> CatalogImportResult:
    """Fetch a supplier's feed once, then save it in checkpointed chunks ``save-0``, ``save-1``, ..."""
    rows = step.run("fetch", fetch_feed, input.supplier, input.products)
    chunks = [rows[i : i + input.chunk_size] for i in range(0, len(rows), input.chunk_size)]
    saved = 0
    for i, chunk in enumerate(chunks):
        result = step.run(f"save-{i}", save_products, input.supplier, chunk)
        saved += result["saved"]
        step.progress(i + 1, total=len(chunks), message=f"saved {saved} of {len(rows)} products")
    step.log.info("catalog imported", supplier=input.supplier, products=saved, chunks=len(chunks))
    return CatalogImportResult(supplier=input.supplier, imported=saved, chunks=len(chunks))


# -- send_invoices -----------------------------------------------------------------------------


class InvoiceBatch(BaseModel):
    """Input of ``send_invoices``: one billing batch, e.g. ``2026-11`` for a month's invoices."""

    batch: str = Field(pattern=r"^[A-Za-z0-9-]{1,40}$")
    customers: list[str] = Field(min_length=1, max_length=500)


class InvoiceBatchResult(BaseModel):
    batch: str
    charged: int
    total_cents: int


def amount_for(customer: str) -> int:
    """A deterministic amount per customer (a real shop would sum the month's orders)."""
    return 1900 + zlib.crc32(customer.encode()) % 8000


def draft_invoices(batch: str, customers: list[str]) -> list[dict[str, Any]]:
    """Create one draft invoice per customer; an invoice that exists already is left as it is."""
    drafted = []
    for position, customer in enumerate(customers, start=1):
        invoice, _ = Invoice.objects.get_or_create(
            number=f"INV-{batch}-{position:03d}",
            defaults={"batch": batch, "customer": customer, "amount_cents": amount_for(customer)},
        )
        drafted.append(
            {
                "number": invoice.number,
                "customer": invoice.customer,
                "amount_cents": invoice.amount_cents,
            }
        )
    return drafted


# A charge the gateway could not take (HTTP 503) is tried again 0.25 s, then 0.5 s later (less up
# to half of it as jitter): delays this short are waited in place, the worker keeping the lease.
# Only the gateway's "try again later" is retried; any other error fails the step at once.
CHARGE_RETRY = Retry(
    max_attempts=3,
    initial_delay=0.25,
    backoff=2.0,
    max_delay=5.0,
    retry_on=(gateway.GatewayUnavailable,),
)

# An outage that outlasts a charge's tries fails the attempt; the run is then tried again later
# (2 s, then 4 s, less up to half of it as jitter), replaying the invoices already charged. Seconds
# so that the demo stays short: a real shop would wait minutes (initial_delay=60, max_delay=3600).
INVOICE_RUN_RETRY = Retry(max_attempts=3, initial_delay=2.0, backoff=2.0)


def charge_invoice(number: str) -> dict[str, Any]:
    """Charge one invoice through the gateway; an invoice already paid is not charged again.

    A declined card is raised as :class:`~django_durably.NonRetryable`: asking again would get the
    same answer, so neither the step nor the run is tried again, whatever their policies say.
    """
    invoice = Invoice.objects.get(number=number)
    if invoice.status != Invoice.Status.PAID:
        try:
            invoice.gateway_ref = gateway.charge(
                customer=invoice.customer,
                amount_cents=invoice.amount_cents,
                idempotency_key=invoice.number,
            )
        except gateway.CardDeclined as exc:
            raise NonRetryable(f"{invoice.number}: {exc}") from exc
        invoice.status = Invoice.Status.PAID
        invoice.paid_at = timezone.now()
        invoice.save(update_fields=["gateway_ref", "status", "paid_at"])
    return {"number": invoice.number, "gateway_ref": invoice.gateway_ref}


@job(
    name="shop.send_invoices",
    queue="billing",
    concurrency_key=lambda request: f"invoices:{request.batch}",
    retry=INVOICE_RUN_RETRY,
    timeout=timedelta(minutes=10),  # per attempt: a batch that hangs is ended and retried
)
def send_invoices(step: StepContext, input: InvoiceBatch) -> InvoiceBatchResult:
    """Draft a batch of invoices, then charge each one in its own step ``charge-<number>``.

    A gateway hiccup is retried within the charge step (``CHARGE_RETRY``). An outage that outlasts
    it fails the attempt, and the run is tried again later (``INVOICE_RUN_RETRY``), replaying the
    invoices already charged. A declined card fails the run at once; once the customer has updated
    their card, resuming the run charges only the invoices that are left.
    """
    invoices = step.run("draft", draft_invoices, input.batch, input.customers)
    total = 0
    for done, invoice in enumerate(invoices):
        try:
            step.run(
                f"charge-{invoice['number']}",
                charge_invoice,
                invoice["number"],
                retry=CHARGE_RETRY,
                timeout=30,  # seconds per call of charge_invoice
            )
        except gateway.GatewayUnavailable:
            step.log.warning(
                "payment gateway unavailable; the run's retry policy decides what comes next",
                invoice=invoice["number"],
                charged=done,
                remaining=len(invoices) - done,
            )
            raise
        except NonRetryable as exc:
            step.log.error(
                "card declined; resume this run once the customer has updated their card",
                invoice=invoice["number"],
                reason=str(exc.__cause__ or exc),
            )
            raise
        total += invoice["amount_cents"]
        step.progress(done + 1, total=len(invoices), message=f"charged {invoice['number']}")
    step.log.info("invoices charged", batch=input.batch, invoices=len(invoices), total_cents=total)
    return InvoiceBatchResult(batch=input.batch, charged=len(invoices), total_cents=total)


# -- place_order -------------------------------------------------------------------------------

PAYMENT_CONFIRMED = "payment-confirmed"
"""The signal the payment provider's webhook sends to an order's run, with ``{"payment_ref": ...}``."""


class OrderRequest(BaseModel):
    """Input of ``place_order``: one customer ordering some units of one product."""

    number: str = Field(pattern=r"^[A-Za-z0-9-]{1,40}$")
    customer: str = Field(min_length=1, max_length=100)
    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(default=1, ge=1, le=100)
    # How long the customer has to pay before the order is cancelled: stored as JSON like the rest
    # of the input (an ISO 8601 duration, "P1D"). The demo gives its unpaid order a few seconds.
    payment_window: timedelta = Field(default=timedelta(days=1), gt=timedelta(0))


class OrderResult(BaseModel):
    number: str
    status: str
    payment_ref: str = ""


def reserve_stock(
    run_id: str, number: str, customer: str, sku: str, quantity: int
) -> dict[str, Any]:
    """Create the order and take its units out of stock, in one transaction; safe to run twice."""
    with transaction.atomic():
        if not Order.objects.filter(number=number).exists():
            product = Product.objects.get(sku=sku)
            taken = Product.objects.filter(pk=product.pk, stock__gte=quantity).update(
                stock=F("stock") - quantity
            )
            if not taken:
                raise NonRetryable(f"{number}: only {product.stock} of {sku} in stock")
            Order.objects.create(
                number=number, customer=customer, product=product, quantity=quantity, run_id=run_id
            )
    return {"number": number, "sku": sku, "quantity": quantity}


def ship_order(number: str, payment_ref: str) -> dict[str, Any]:
    """Mark the paid order shipped (a real shop would book the courier here); safe to run twice."""
    order = Order.objects.get(number=number)
    if order.status == Order.Status.RESERVED:
        order.status = Order.Status.SHIPPED
        order.payment_ref = payment_ref
        order.shipped_at = timezone.now()
        order.save(update_fields=["status", "payment_ref", "shipped_at"])
    return {"number": order.number, "status": order.status}


def release_stock(number: str) -> dict[str, Any]:
    """Cancel the unpaid order and put its units back in stock, in one transaction; safe to run
    twice (only a reserved order is cancelled)."""
    with transaction.atomic():
        if Order.objects.filter(number=number, status=Order.Status.RESERVED).update(
            status=Order.Status.CANCELLED
        ):
            order = Order.objects.get(number=number)
            Product.objects.filter(pk=order.product_id).update(stock=F("stock") + order.quantity)
    return {"number": number, "status": Order.Status.CANCELLED}


@job(name="shop.place_order", queue="orders")
def place_order(step: StepContext, input: OrderRequest) -> OrderResult:
    """Reserve the order's stock, then wait for the payment provider to confirm the payment (the
    signal ``payment-confirmed``, sent by :func:`confirm_payment`). Paid: ship the order. Not paid
    within ``payment_window``: cancel it and release its stock.

    While it waits, the run is ``waiting``: it holds no worker and no lease, for a day if need be.
    The signal wakes it and the job starts again from the top: ``reserve`` is replayed from its
    checkpoint (not run again), and the wait returns the signal's payload.
    """
    step.run(
        "reserve",
        reserve_stock,
        str(step.run_id),
        input.number,
        input.customer,
        input.sku,
        input.quantity,
    )
    try:
        payment = step.wait_for_signal(PAYMENT_CONFIRMED, timeout=input.payment_window)
    except SignalTimeout:
        step.run("release", release_stock, input.number)
        step.log.warning("no payment in time: order cancelled, stock released", order=input.number)
        return OrderResult(number=input.number, status="cancelled")
    step.run("ship", ship_order, input.number, payment["payment_ref"])
    step.log.info("order paid and shipped", order=input.number, payment_ref=payment["payment_ref"])
    return OrderResult(number=input.number, status="shipped", payment_ref=payment["payment_ref"])


def confirm_payment(number: str, payment_ref: str) -> SignalResult:
    """What the payment provider's webhook calls when the order ``number`` is paid.

    Providers deliver a webhook more than once: the payment reference is the signal's idempotency
    key, so a repeated delivery stores nothing more (``created`` is false), even once the run has
    finished. A confirmation that arrives before the run waits is kept until it does. A new
    confirmation for a run that has finished (its payment window closed, say) raises
    ``RunNotWaiting``.
    """
    order = Order.objects.get(number=number)
    return send_signal(
        order.run_id,
        PAYMENT_CONFIRMED,
        {"payment_ref": payment_ref},
        idempotency_key=payment_ref,
        actor="payment-webhook",
    )
