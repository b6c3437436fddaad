"""What the shop's jobs write: products imported from a supplier feed, and invoices."""

from django.db import models


class Product(models.Model):
    """A catalog entry, upserted by ``import_catalog`` (keyed by SKU, so re-imports are safe)."""

    sku = models.CharField(max_length=64, unique=True)
    supplier = models.CharField(max_length=64)
    name = models.CharField(max_length=200)
    category = models.CharField(max_length=64)
    price_cents = models.PositiveIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["sku"]

    def __str__(self) -> str:
        return f"{self.sku} {self.name}"


class Invoice(models.Model):
    """One customer's invoice in a billing batch, drafted and then charged by ``send_invoices``."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PAID = "paid", "Paid"

    number = models.CharField(max_length=64, unique=True)
    batch = models.CharField(max_length=64, db_index=True)
    customer = models.CharField(max_length=100)
    amount_cents = models.PositiveIntegerField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.DRAFT)
    gateway_ref = models.CharField(max_length=64, blank=True, default="")
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return f"{self.number} {self.customer} ({self.status})"
