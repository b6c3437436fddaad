"""A ready-made HTTP API for hosts without a NinjaAPI of their own.

    urlpatterns = [path("durably/", include("django_durably.urls"))]

serves the endpoints of :mod:`django_durably.api` under ``durably/``, the OpenAPI schema at
``durably/openapi.json`` and interactive docs at ``durably/docs`` (both behind the API's auth unless
``DURABLY_API_DOCS_PUBLIC``). URL names live in the
``durably`` namespace (``reverse("durably:list_runs")``). Hosts that already have a ``NinjaAPI``
mount ``django_durably.api.router`` on it instead.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import re_path
from django.views.decorators.csrf import csrf_exempt
from ninja import NinjaAPI

from django_durably import __version__
from django_durably.access import docs_auth
from django_durably.api import router

api = NinjaAPI(
    title="django-durably",
    version=__version__,
    description="Trigger, list, inspect, cancel, resume, retrigger and delete durable runs.",
    urls_namespace="durably",
    docs_decorator=docs_auth,
)
api.add_router("/", router)


@csrf_exempt  # else an unknown path's POST gets the CSRF middleware's HTML 403
def not_found(request: HttpRequest, unmatched: str) -> JsonResponse:
    """Unknown paths under the API answer in JSON too, not with the site's HTML 404 page."""
    return JsonResponse({"detail": "Not Found"}, status=404)


app_name = "durably"
urlpatterns = [*api.urls[0], re_path(r"^(?P<unmatched>[\s\S]*)$", not_found)]
