"""Auth and scoping hooks for the HTTP API tests (named by dotted path in DURABLY_API_* settings)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from ninja.security import APIKeyHeader, APIKeyQuery, HttpBearer

from django_durably.access import LabelScope

API_KEY = "test-api-key"


class ApiKey(APIKeyHeader):
    """An API key that identifies no user: the key alone decides (every endpoint is allowed)."""

    param_name = "X-API-Key"

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        return key == API_KEY


class UserToken(HttpBearer):
    """``Authorization: Bearer user:<username>`` authenticates as that user (whose permissions
    then apply)."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        if not token.startswith("user:"):
            return None
        return get_user_model().objects.filter(username=token.removeprefix("user:")).first()


class QueryKey(APIKeyQuery):
    """``?key=user:<username>`` authenticates as that user: an auth a browser's form can carry."""

    param_name = "key"

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        if not key or not key.startswith("user:"):
            return None
        return get_user_model().objects.filter(username=key.removeprefix("user:")).first()


def session_user(request: HttpRequest) -> Any:
    """A hand-written session auth that checks no CSRF token itself."""
    user = request.user
    return user if user.is_authenticated else None


class TenantScope(LabelScope):
    """Each user sees the runs labelled with its tenant: the part of its username before "-"
    (``acme-ops`` -> ``tenant=acme``). Superusers see everything; users without a "-", nothing."""

    def labels_for(self, request: HttpRequest) -> dict[str, str] | None:
        user = request.user
        if getattr(user, "is_superuser", False):
            return {}
        tenant, sep, _ = str(user.get_username()).partition("-")
        return {"tenant": tenant} if sep else None


class ReadOnlyTenantScope(TenantScope):
    """Like :class:`TenantScope`, but nobody may trigger (or retrigger) runs."""

    def check_trigger(
        self, request: HttpRequest, job_name: str, labels: dict[str, str]
    ) -> dict[str, str]:
        raise PermissionDenied("Runs are triggered by the nightly batch only.")


def trusted_network(request: HttpRequest) -> bool:
    """A plain function as auth (no OpenAPI security scheme): requests from 10.0.0.1 only."""
    return request.META.get("REMOTE_ADDR") == "10.0.0.1"
