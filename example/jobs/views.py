"""The site's pages (the JSON API is ``jobs.api``). Every page answers ``HEAD`` as it answers ``GET``."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from jobs.api import export_size
from jobs.forms import RandomUsersForm
from jobs.models import STATE_LABELS, ExportFile, Job, JobKind, JobState, public_users
from jobs.services import EnqueueError, submit_job
from jobs.validation import bounded_check

logger = logging.getLogger(__name__)

USERS_PAGE_SIZE = 50
_page_number = bounded_check("page", 1, 10**9, whole=True, from_text=True)


@require_http_methods(["GET", "HEAD", "POST"])
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


@require_POST
def export(request: HttpRequest) -> HttpResponse:
    try:
        job = submit_job(JobKind.EXPORT_USERS, {})
    except EnqueueError as exc:
        messages.error(request, str(exc))
        return redirect("jobs:home")
    return redirect("jobs:detail", job_id=job.id)


def duration(start: datetime | None, end: datetime | None) -> str:
    """``0.4 s``, ``12 s``, ``3 min 05 s``, ``2 h 04 min``: the precision a person reads."""
    if start is None or end is None:
        return ""
    seconds = max((end - start) / timedelta(seconds=1), 0.0)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@require_safe
def job_detail(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    job = get_object_or_404(Job, pk=job_id)
    export_file = ExportFile.objects.filter(job=job).only("filename", "rows").first()
    export_bytes = export_size(job.id) if export_file else None
    context = {
        "job": job,
        "api_url": reverse("api:job", args=[job.id]),
        "queued_for": duration(job.created_at, job.started_at),
        "ran_for": duration(job.started_at, job.finished_at),
        "export_file": export_file,
        "export_bytes": export_bytes or 0,
        "made_users": job.kind == JobKind.RANDOM_USERS and job.state == JobState.SUCCESS,
        "state_labels": {str(state): label for state, label in STATE_LABELS.items()},
    }
    return render(request, "jobs/job.html", context)


@require_safe
def job_download(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    export_file = get_object_or_404(ExportFile, job_id=job_id)
    response = HttpResponse(bytes(export_file.content), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{export_file.filename}"'
    return response


@require_safe
def user_list(request: HttpRequest) -> HttpResponse:
    """Users, newest first; a bad page number is a 400 and one past the end a 404, as in the API."""
    users = public_users().order_by("-id")
    job: Job | None = None
    job_param = request.GET.get("job")
    if job_param:
        try:
            job = Job.objects.filter(pk=uuid.UUID(job_param)).first()
        except ValueError:
            job = None
        if job is None:
            return _users_error(request, 404, f"There is no job {job_param[:40]!r} to show users of.")
        users = users.filter(generated_by__job=job)
    paginator = Paginator(users, USERS_PAGE_SIZE)
    try:
        number = int(_page_number(request.GET.get("page", "1")))
    except ValueError:
        return _users_error(
            request, 400, f"The page number must be a whole number from 1; got {request.GET['page'][:40]!r}."
        )
    last = max(paginator.num_pages, 1)
    if number > last:
        return _users_error(request, 404, f"There is no page {number}: the last page is {last}.")
    page = paginator.page(number)
    query = f"job={job.id}&" if job else ""
    context = {"page": page, "count": paginator.count, "job": job, "query": query}
    return render(request, "jobs/users.html", context)


def _users_error(request: HttpRequest, status: int, message: str) -> HttpResponse:
    return render(request, "jobs/users_error.html", {"message": message}, status=status)
