from django.contrib import admin

from shop.models import Invoice, Order, Product


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["sku", "name", "category", "price_cents", "stock", "supplier", "updated_at"]
    list_filter = ["supplier", "category"]
    search_fields = ["sku", "name"]


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    list_display = ["number", "customer", "amount_cents", "status", "gateway_ref", "paid_at"]
    list_filter = ["status", "batch"]
    search_fields = ["number", "customer"]


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["number", "customer", "product", "quantity", "status", "payment_ref"]
    list_filter = ["status"]
    search_fields = ["number", "customer", "payment_ref"]
