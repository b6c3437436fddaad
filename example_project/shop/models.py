"""What the shop's jobs write: products imported from a supplier feed, invoices, and orders."""

from django.db import models


class Product(models.Model):
    """A catalog entry, upserted by ``import_catalog`` (keyed by SKU, so re-imports are safe)."""

    sku = models.CharField(max_length=64, unique=True)
    supplier = models.CharField(max_length=64)
    name = models.CharField(max_length=200)
    category = models.CharField(max_length=64)
    price_cents = models.PositiveIntegerField()
    stock = models.PositiveIntegerField(default=10)
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


class Order(models.Model):
    """A customer's order, placed by ``place_order``: its stock is reserved while it waits for the
    payment, then it is shipped, or cancelled and its stock released when no payment came."""

    class Status(models.TextChoices):
        RESERVED = "reserved", "Reserved, awaiting payment"
        SHIPPED = "shipped", "Shipped"
        CANCELLED = "cancelled", "Cancelled"

    number = models.CharField(max_length=64, unique=True)
    customer = models.CharField(max_length=100)
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="orders")
    quantity = models.PositiveIntegerField()
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.RESERVED)
    payment_ref = models.CharField(max_length=64, blank=True, default="")
    run_id = models.UUIDField(help_text="The place_order run that handles the order.")
    created_at = models.DateTimeField(auto_now_add=True)
    shipped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return f"{self.number} {self.customer} ({self.status})"
