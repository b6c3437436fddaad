from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules
from django.utils.translation import gettext_lazy as _


class DurablyConfig(AppConfig):
    name = "django_durably"
    label = "durably"
    verbose_name = _("Durable jobs")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_durably import checks, receivers  # noqa: F401 - registers the checks
        from django_durably.conf import durably_settings

        receivers.connect()
        autodiscover_modules(durably_settings.JOBS_MODULE)
