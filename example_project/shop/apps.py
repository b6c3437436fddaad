from django.apps import AppConfig


class ShopConfig(AppConfig):
    """A small shop whose background work (catalog imports, invoicing) runs as durable jobs."""

    name = "shop"
    verbose_name = "Shop"
    default_auto_field = "django.db.models.BigAutoField"
