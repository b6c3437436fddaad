from django.contrib import admin

from shop.models import Invoice, Product


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["sku", "name", "category", "price_cents", "supplier", "updated_at"]
    list_filter = ["supplier", "category"]
    search_fields = ["sku", "name"]


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    list_display = ["number", "customer", "amount_cents", "status", "gateway_ref", "paid_at"]
    list_filter = ["status", "batch"]
    search_fields = ["number", "customer"]
