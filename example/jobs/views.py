from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from django.contrib import messages
from django.contrib.auth.models import User
from django.core.paginator import Paginator
from django.http import (
    HttpRequest,
    HttpResponse,
    JsonResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from celery_fleet.health import shutting_down
from jobs.forms import RandomUsersForm
from jobs.models import ExportFile, Job, JobKind, JobState
from jobs.services import EnqueueError, IdempotencyKeyError, submit_job
from jobs.validation import JobRequestError, parse_job_request

logger = logging.getLogger(__name__)

API_PAGE_SIZE_DEFAULT = 50
API_PAGE_SIZE_MAX = 200
#: Longest long-poll, below gunicorn's request timeout.
API_MAX_WAIT = 25.0
LONG_POLL_INTERVAL = 0.2
OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")


# --- Pages -------------------------------------------------------------------------------
@require_http_methods(["GET", "POST"])
def home(request: HttpRequest) -> HttpResponse:
    form = RandomUsersForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            params: dict[str, Any] = {"total": form.cleaned_data["total"]}
            if form.cleaned_data["fail"]:
                params["fail"] = True
            try:
                job = submit_job(JobKind.RANDOM_USERS, params)
            except EnqueueError as exc:
                messages.error(request, str(exc))
            else:
                return redirect("jobs:detail", job_id=job.id)
        status = 400
    else:
        status = 200
    recent = Job.objects.all()[:10]
    return render(request, "jobs/home.html", {"form": form, "recent": recent}, status=status)


@require_http_methods(["POST"])
def export(request: HttpRequest) -> HttpResponse:
    try:
        job = submit_job(JobKind.EXPORT_USERS, {})
    except EnqueueError as exc:
        messages.error(request, str(exc))
        return redirect("jobs:home")
    return redirect("jobs:detail", job_id=job.id)


@require_GET
def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    job = get_object_or_404(Job, pk=job_id)
    return render(request, "jobs/job.html", {"job": job, "api_url": reverse("api:job", args=[job.id])})


@require_GET
def job_download(request: HttpRequest, job_id: str) -> HttpResponse:
    export_file = get_object_or_404(ExportFile, job_id=job_id)
    response = HttpResponse(bytes(export_file.content), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{export_file.filename}"'
    return response


@require_GET
def user_list(request: HttpRequest) -> HttpResponse:
    page = Paginator(User.objects.order_by("-id"), 50).get_page(request.GET.get("page"))
    return render(request, "jobs/users.html", {"page": page, "count": page.paginator.count})


# --- JSON API ----------------------------------------------------------------------------
def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


@csrf_exempt
@require_http_methods(["POST"])
def api_jobs(request: HttpRequest) -> JsonResponse:
    try:
        payload = json.loads(request.body or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(400, f"the body is not valid JSON: {exc}")
    try:
        kind, params = parse_job_request(payload)
    except JobRequestError as exc:
        return _error(400, str(exc))
    try:
        job = submit_job(kind, params, idempotency_key=request.headers.get("Idempotency-Key"))
    except IdempotencyKeyError as exc:
        return _error(exc.status, str(exc))
    except EnqueueError as exc:
        return _error(503, str(exc))
    url = request.build_absolute_uri(reverse("api:job", args=[job.id]))
    response = JsonResponse({"id": str(job.id), "url": url}, status=202)
    response["Location"] = url
    return response


@require_GET
def api_job(request: HttpRequest, job_id: str) -> JsonResponse:
    """The job; ``?wait=N`` long-polls up to N seconds for it to finish (fewer requests than polling)."""
    try:
        job = Job.objects.get(pk=uuid.UUID(job_id))
    except (ValueError, Job.DoesNotExist):
        return _error(404, f"no job with id {job_id}")
    try:
        wait = float(request.GET.get("wait", "0"))
    except ValueError:
        return _error(400, "wait must be a number of seconds")
    if not 0 <= wait <= API_MAX_WAIT:
        return _error(400, f"wait must be from 0 to {API_MAX_WAIT} seconds")
    deadline = time.monotonic() + wait
    while not job.is_final and time.monotonic() < deadline and not shutting_down.is_set():
        time.sleep(LONG_POLL_INTERVAL)
        job.refresh_from_db()
    data = job.as_api()
    if job.state == JobState.SUCCESS and hasattr(job, "export_file"):
        data["download_url"] = request.build_absolute_uri(reverse("jobs:download", args=[job.id]))
    return JsonResponse(data)


@require_GET
def api_users(request: HttpRequest) -> JsonResponse:
    try:
        page_number = int(request.GET.get("page", "1"))
        page_size = int(request.GET.get("page_size", str(API_PAGE_SIZE_DEFAULT)))
    except ValueError:
        return _error(400, "page and page_size must be whole numbers")
    if page_number < 1 or not 1 <= page_size <= API_PAGE_SIZE_MAX:
        return _error(400, f"page must be >= 1 and page_size from 1 to {API_PAGE_SIZE_MAX}")
    paginator = Paginator(
        User.objects.order_by("id").values("id", "username", "email", "first_name", "last_name"),
        page_size,
    )
    if page_number > max(paginator.num_pages, 1):
        return _error(404, f"page {page_number} is past the last page ({paginator.num_pages})")
    page = paginator.page(page_number)

    def link(number: int) -> str:
        return request.build_absolute_uri(f"{reverse('api:users')}?page={number}&page_size={page_size}")

    return JsonResponse(
        {
            "count": paginator.count,
            "next": link(page_number + 1) if page.has_next() else None,
            "previous": link(page_number - 1) if page.has_previous() else None,
            "results": list(page.object_list),
        }
    )


@require_GET
def openapi_spec(request: HttpRequest) -> HttpResponse:
    return HttpResponse(OPENAPI_PATH.read_bytes(), content_type="application/yaml")


@require_GET
def api_docs(request: HttpRequest) -> HttpResponse:
    return render(request, "jobs/api_docs.html", {"spec": OPENAPI_PATH.read_text(encoding="utf-8")})
