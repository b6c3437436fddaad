"""URLs of the example project: the Django admin (django-durably's admin and API are planned)."""

from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
]
