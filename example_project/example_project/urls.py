"""URLs of the example project: the Django admin and django-durably's HTTP API.

Log in to the admin as a staff user, then browse the API's interactive docs at /durably/docs.
"""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("durably/", include("django_durably.urls")),
]
