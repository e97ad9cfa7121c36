"""Liveness and readiness for the web tier; readiness touches every real dependency.

* ``/healthz``: the process answers (a liveness probe must not fail because a dependency is down,
  or a broker outage would restart every web pod).
* ``/readyz``: ``SELECT 1`` on the default database and a broker round trip on a fresh connection;
  ``503`` naming each failing part, and ``503`` from the moment the process starts shutting down
  (``celery_fleet.gunicorn_conf`` sets the flag on SIGTERM), so the endpoint leaves the Service
  before gunicorn stops accepting.
"""

from __future__ import annotations

from celery import current_app
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from celery_fleet.health import check_broker, shutting_down


# csrf_exempt: a probe takes GET and HEAD only, and any other method is a 405, never a CSRF 403.
@csrf_exempt
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@csrf_exempt
@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    failures: dict[str, str] = {}
    if shutting_down.is_set():
        failures["process"] = "shutting down"
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        failures["database"] = f"{type(exc).__name__}: {exc}"
    try:
        # The broker the project's Celery app publishes to (its package imports it, as Celery's
        # Django guide has it, so it is the current app).
        check_broker(current_app.conf.broker_url)
    except Exception as exc:
        failures["broker"] = f"{type(exc).__name__}: {exc}"
    if failures:
        return JsonResponse({"status": "unavailable", "failing": failures}, status=503)
    return JsonResponse({"status": "ok", "checks": ["database", "broker"]})
