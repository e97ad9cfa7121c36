"""``/api/``: the django-ninja API (operations, ``openapi.json``, ``docs/``) and the spec as YAML."""

from django.urls import path

from jobs.api import api, openapi_yaml

ninja_patterns, _, _ = api.urls

app_name = "api"

urlpatterns = [
    *ninja_patterns,
    path("openapi.yaml", openapi_yaml, name="openapi"),
]
