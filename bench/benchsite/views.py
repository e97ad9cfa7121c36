"""Baselines for ``POST /api/jobs/``: the same request and response, minus the database or broker.

Each view parses and validates the body as ``jobs.api.submit`` does (``jobs.validation``) and answers the same
202 JSON with a ``Location``; they differ only in what happens in between:

* ``bare``: nothing (a fresh UUID stands in for the job id);
* ``insert``: the ``Job`` row is created, nothing is published;
* ``publish``: the task is published exactly as ``submit_job`` does, no row is written;
* ``publish_plain``: the task is published with neither ``link``/``link_error`` nor a retry
  policy (what those options cost);
* ``textbook``: ``Job.objects.create`` + ``task.delay()`` on a Celery app with Celery's
  defaults (``benchsite.textbook``), served by a gunicorn of its own without celery-fleet's
  publish hooks (``benchsite.textbook_settings``).

So ``enqueue - insert`` is the broker's share and ``insert - bare`` the database's.
"""

from __future__ import annotations

import uuid

from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from jobs import services, tasks
from jobs.models import Job, JobKind
from jobs.validation import BodyError, parse_job_request


def _parse(request: HttpRequest) -> tuple[JobKind, dict] | JsonResponse:
    try:
        return parse_job_request(request.content_type or "", request.body)
    except BodyError as exc:
        return JsonResponse({"error": str(exc)}, status=400)


def _accepted(request: HttpRequest, job_id: uuid.UUID) -> JsonResponse:
    url = request.build_absolute_uri(reverse("api:job", args=[job_id]))
    response = JsonResponse({"id": str(job_id), "url": url}, status=202)
    response["Location"] = url
    return response


@csrf_exempt
@require_http_methods(["POST"])
def bare(request: HttpRequest) -> JsonResponse:
    parsed = _parse(request)
    if isinstance(parsed, JsonResponse):
        return parsed
    return _accepted(request, uuid.uuid4())


def _insert(request: HttpRequest) -> Job | JsonResponse:
    parsed = _parse(request)
    if isinstance(parsed, JsonResponse):
        return parsed
    kind, params = parsed
    return Job.objects.create(kind=kind, params=params)


@csrf_exempt
@require_http_methods(["POST"])
def insert(request: HttpRequest) -> JsonResponse:
    job = _insert(request)
    return job if isinstance(job, JsonResponse) else _accepted(request, job.id)


@csrf_exempt
@require_http_methods(["POST"])
def publish(request: HttpRequest) -> JsonResponse:
    parsed = _parse(request)
    if isinstance(parsed, JsonResponse):
        return parsed
    kind, _params = parsed
    job_id = str(uuid.uuid4())
    services.TASKS[kind].apply_async(
        args=(job_id,),
        task_id=job_id,
        link=tasks.on_job_success.si(None, job_id),
        link_error=tasks.on_job_failure.s(job_id=job_id),
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
    )
    return _accepted(request, uuid.UUID(job_id))


@csrf_exempt
@require_http_methods(["POST"])
def publish_plain(request: HttpRequest) -> JsonResponse:
    parsed = _parse(request)
    if isinstance(parsed, JsonResponse):
        return parsed
    kind, _params = parsed
    job_id = str(uuid.uuid4())
    services.TASKS[kind].apply_async(args=(job_id,), task_id=job_id)
    return _accepted(request, uuid.UUID(job_id))


@csrf_exempt
@require_http_methods(["POST"])
def textbook(request: HttpRequest) -> JsonResponse:
    from benchsite.textbook import generate_random_users

    job = _insert(request)  # Job.objects.create(...), as insert
    if isinstance(job, JsonResponse):
        return job
    generate_random_users.delay(str(job.id))
    return _accepted(request, job.id)
