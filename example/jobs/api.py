"""The JSON API on django-ninja: operations, their schemas and the OpenAPI spec generated from them.

The documented contract: paths under ``/api/``, ``400`` (not ninja's ``422``) with the ``Error``
schema for every bad request (``409`` for an ``Idempotency-Key`` reused with another body),
``415`` for a body that is not declared JSON, JSON ``404``/``405`` (``jobs.middleware``), ``HEAD``
wherever ``GET``.  The long-poll (``GET /api/jobs/{id}?wait=N``) is an async view: under the ASGI
workers a waiting client costs a coroutine, woken by ``jobs.notify``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.core.paginator import Paginator
from django.db import OperationalError, connection
from django.db.models.functions import Length
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe
from ninja import NinjaAPI, Query, Redoc, Schema
from ninja.errors import HttpError, ValidationError
from ninja.params.functions import Header
from pydantic import BeforeValidator, Field

from celery_fleet.health import shutting_down
from jobs import notify
from jobs.models import ExportFile, Job, JobKind, JobState, public_users
from jobs.services import (
    IDEMPOTENCY_KEY_PATTERN,
    EnqueueError,
    IdempotencyKeyError,
    check_idempotency_key,
    submit_job,
)
from jobs.validation import (
    MAX_BODY_BYTES,
    BodyError,
    JobRequest,
    JsonOnlyParser,
    UnsupportedMediaType,
    describe_errors,
    job_params,
    seconds,
    whole_number,
)

#: Longest long-poll, well below gunicorn's graceful timeout (a draining pod answers them at once).
API_MAX_WAIT = 25.0
API_PAGE_SIZE_DEFAULT = 50
API_PAGE_SIZE_MAX = 200


class Error(Schema):
    error: str = Field(description="What was wrong, for a person to read.")


class JobAccepted(Schema):
    id: uuid.UUID
    url: str = Field(description="The job's URL (also in the Location header).")


class JobOut(Schema):
    id: uuid.UUID
    kind: Literal["random_users", "export_users", "timed_work"]
    state: Literal["PENDING", "STARTED", "PROGRESS", "SUCCESS", "FAILURE"]
    progress: int = Field(ge=0, le=100)
    result: dict[str, Any] | None
    error: str | None
    params: dict[str, Any]
    callbacks_ran: list[Literal["on_success", "on_failure"]]
    attempts: int = Field(ge=0)
    republishes: int = Field(
        ge=0, description="Times the outbox published the job again because the broker had lost its message."
    )
    worker: str | None = Field(description="The worker (Celery hostname) that last started the job.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    download_url: str | None = Field(None, description="The CSV report of a finished export.")
    download_bytes: int | None = Field(None, description="The report's size in bytes.")
    users_url: str | None = Field(None, description="The users a finished random_users job made.")


class UserOut(Schema):
    id: int
    username: str
    email: str
    first_name: str
    last_name: str


class UserPage(Schema):
    count: int = Field(ge=0)
    next: str | None
    previous: str | None
    results: list[UserOut]


class SiteRedoc(Redoc):
    """Redoc from ninja's own static files (no CDN), inside the site's layout.

    The page may load nothing from elsewhere (Redoc's sidebar would fetch its maker's logo from
    a CDN): its Content-Security-Policy says so, and the browser holds it to that.
    """

    template = "jobs/api_docs.html"
    content_security_policy = (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'none'"
    )

    def render_page(self, request: HttpRequest, api: NinjaAPI, **kwargs: Any) -> HttpResponse:
        response = super().render_page(request, api, **kwargs)
        response["Content-Security-Policy"] = self.content_security_policy
        return response


def _docs_view(view: Any) -> Any:
    # The spec and the docs page are read-only pages: GET and HEAD, never a CSRF 403.
    return csrf_exempt(require_safe(view))


class JobsAPI(NinjaAPI):
    def get_openapi_schema(self, *args: Any, **kwargs: Any) -> Any:
        schema = super().get_openapi_schema(*args, **kwargs)
        schema["paths"].update(PROBE_PATHS)  # the site's probes (celery_fleet.django), beside the API
        return schema


api = JobsAPI(
    title="celery-fleet example jobs API",
    version="1.0.0",
    description=(
        "Hand slow work to Celery workers and follow it. A POST answers 202 at once; the job runs on a "
        "worker and its state, progress and result are read back by id, or waited for with `?wait=N`."
    ),
    urls_namespace="api",
    parser=JsonOnlyParser(),
    docs=SiteRedoc(),
    docs_url="/docs/",
    openapi_url="/openapi.json",
    docs_decorator=_docs_view,
)


def error(status: int, message: str) -> tuple[int, dict[str, str]]:
    return status, {"error": message}


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    if request.method == "POST" and not request.body and request.content_type != "application/json":
        return api.create_response(
            request, {"error": "the body must be JSON sent as Content-Type: application/json"}, status=415
        )
    return api.create_response(request, {"error": describe_errors(list(exc.errors))}, status=400)


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    # Django refuses to read a body past DATA_UPLOAD_MAX_MEMORY_SIZE before the parser sees it.
    size = request.META.get("CONTENT_LENGTH", "too many")
    message = f"the body is {size} bytes; a job request is at most {MAX_BODY_BYTES}"
    return api.create_response(request, {"error": message}, status=400)


@api.exception_handler(OperationalError)
def _database_unavailable(request: HttpRequest, exc: OperationalError) -> HttpResponse:
    # The database is down, or every pooled connection stayed busy past DB_POOL_TIMEOUT: the
    # request was fine, so not a 500.  A POST that failed this way recorded nothing, unless the
    # database went away between its steps: a retry with the same Idempotency-Key finds that job.
    response = api.create_response(
        request, {"error": "the database is unavailable or busy; retry shortly"}, status=503
    )
    response["Retry-After"] = "5"
    return response


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    # ninja wraps whatever the body parser raised; the parser's own message is the useful one.
    cause = exc.__cause__
    if isinstance(cause, UnsupportedMediaType):
        return api.create_response(request, {"error": str(cause)}, status=415)
    if isinstance(cause, BodyError):
        return api.create_response(request, {"error": str(cause)}, status=400)
    return api.create_response(request, {"error": str(exc)}, status=exc.status_code)


# --- Jobs ------------------------------------------------------------------------------------
def _idempotency_key(value: Any) -> Any:
    try:
        return check_idempotency_key(value)
    except IdempotencyKeyError as exc:  # the 400's message, before the schema's pattern speaks
        raise ValueError(str(exc)) from None


#: The key's rule, checked by the service, with its message; the pattern shows it in the schema.
IdempotencyKey = Annotated[str | None, BeforeValidator(_idempotency_key)]


@api.post(
    "/jobs/",
    url_name="jobs",
    operation_id="submitJob",
    response={202: JobAccepted, 400: Error, 405: Error, 409: Error, 415: Error, 503: Error},
    summary="Submit a job",
    openapi_extra={
        "responses": {
            202: {"headers": {"Location": {"description": "The job's URL.", "schema": {"type": "string"}}}},
            409: {"description": "The Idempotency-Key was already used for a different request."},
            503: {
                "description": "The broker did not take the job: it is recorded as refused and never "
                "runs. Or the database is unavailable (with Retry-After): retry, with the same "
                "Idempotency-Key to be sure of one job."
            },
        }
    },
)
def submit(
    request: HttpRequest,
    response: HttpResponse,
    payload: JobRequest,
    idempotency_key: IdempotencyKey = Header(  # noqa: B008 (ninja's way to declare a header)
        None,
        alias="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="A retried POST with the same key returns the first job (another body: 409).",
    ),
) -> tuple[int, Any]:
    """Queue a job; it runs on a worker. Bad input answers 400 and queues nothing.

    With an ``Idempotency-Key`` (1 to 200 printable ASCII characters, no spaces) a retried POST
    returns the first job instead of queueing another; the same key with a different body answers
    409 (a conflict with the state the first request left, not a bad request). A 503 means the
    broker refused the job: it is recorded as refused, will never run, and its key is free again.
    """
    kind, params = job_params(payload)
    try:
        job = submit_job(kind, params, idempotency_key=idempotency_key)
    except IdempotencyKeyError as exc:
        return error(exc.status, str(exc))
    except EnqueueError as exc:
        return error(503, str(exc))
    url = request.build_absolute_uri(reverse("api:job", args=[job.id]))
    response["Location"] = url
    return 202, {"id": job.id, "url": url}


Wait = seconds("wait", 0, API_MAX_WAIT)
# A plain string checked in the view, so that an id that is not a UUID is a 404 like any unknown id.
JobId = Annotated[str, Field(json_schema_extra={"format": "uuid"})]


def _job_payload(request: HttpRequest, job_id: uuid.UUID) -> tuple[Job, dict[str, Any]] | None:
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        return None
    data = job.as_api()
    if job.state == JobState.SUCCESS:
        size = export_size(job.id)
        if size is not None:
            data["download_url"] = request.build_absolute_uri(reverse("jobs:download", args=[job.id]))
            data["download_bytes"] = size
        elif job.kind == JobKind.RANDOM_USERS:
            data["users_url"] = request.build_absolute_uri(f"{reverse('api:users')}?job={job.id}")
    return job, data


def _read_job(request: HttpRequest, job_id: uuid.UUID) -> tuple[Job, dict[str, Any]] | None:
    """One read of a job, its database connection given back at once: a long-poll waits seconds
    between reads and must not hold a connection (the web's pool has a few) while it waits."""
    try:
        return _job_payload(request, job_id)
    finally:
        connection.close()


def export_size(job_id: uuid.UUID) -> int | None:
    """Bytes of the job's CSV report, counted by the database (``None``: the job has none)."""
    sizes = ExportFile.objects.filter(job_id=job_id).annotate(size=Length("content"))
    size = sizes.values_list("size", flat=True).first()
    return None if size is None else int(size)


@api.get(
    "/jobs/{job_id}",
    url_name="job",
    operation_id="getJob",
    response={200: JobOut, 400: Error, 404: Error, 405: Error, 503: Error},
    summary="A job's state, progress and result",
)
async def get_job(request: HttpRequest, job_id: JobId, wait: Wait = 0.0) -> tuple[int, Any]:  # type: ignore[valid-type]
    """`?wait=N` long-polls: the answer comes when the job is final, or after N seconds (at most 25)."""
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        return error(404, f"no job with id {job_id[:64]!r}: not a UUID")
    read = sync_to_async(_read_job)
    found = await read(request, key)
    if found is not None and wait > 0 and not found[0].is_final:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(wait)
        async with notify.job_events().watching(str(key)) as watch:
            found = await read(request, key)  # again, now that a change can no longer slip by
            last_read = loop.time()
            while found is not None and not found[0].is_final and not shutting_down.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                changed = await watch.wait(min(remaining, notify.TICK))
                if changed or loop.time() - last_read >= watch.recheck_interval:
                    found = await read(request, key)
                    last_read = loop.time()
    if found is None:
        return error(404, f"no job with id {key}")
    return 200, found[1]


# --- Users ------------------------------------------------------------------------------------
Page = whole_number("page", 1, 10**9, from_text=True)
JobFilter = Annotated[uuid.UUID | None, Query(None, description="Only the users this random_users job made.")]
PageSize = whole_number("page_size", 1, API_PAGE_SIZE_MAX, from_text=True)


@api.get(
    "/users/",
    url_name="users",
    operation_id="listUsers",
    response={200: UserPage, 400: Error, 404: Error, 405: Error, 503: Error},
    summary="Users, paginated (never staff accounts)",
)
def list_users(
    request: HttpRequest,
    page: Page = 1,  # type: ignore[valid-type]
    page_size: PageSize = API_PAGE_SIZE_DEFAULT,  # type: ignore[valid-type]
    job: JobFilter = None,
) -> tuple[int, Any]:
    users = public_users().order_by("id")
    if job is not None:
        if not Job.objects.filter(pk=job).exists():
            return error(404, f"no job with id {job}")
        users = users.filter(generated_by__job_id=job)
    paginator = Paginator(users.values("id", "username", "email", "first_name", "last_name"), page_size)
    if page > max(paginator.num_pages, 1):
        return error(404, f"page {page} is past the last page ({paginator.num_pages})")
    current = paginator.page(page)

    def link(number: int) -> str:
        query = f"page={number}&page_size={page_size}" + (f"&job={job}" if job else "")
        return request.build_absolute_uri(f"{reverse('api:users')}?{query}")

    return 200, {
        "count": paginator.count,
        "next": link(page + 1) if current.has_next() else None,
        "previous": link(page - 1) if current.has_previous() else None,
        "results": list(current.object_list),
    }


# --- The spec, beside the API --------------------------------------------------------------
PROBE_PATHS: dict[str, Any] = {
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "summary": "Liveness (the process answers)",
            "responses": {
                "200": {
                    "description": "Alive.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "summary": "Readiness: SELECT 1 on the database, a broker round trip on a fresh connection",
            "responses": {
                "200": {
                    "description": "Ready.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "503": {
                    "description": "Not ready (or shutting down); the failing part is named in `failing`.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
            },
        }
    },
}


@_docs_view
def openapi_yaml(request: HttpRequest) -> HttpResponse:
    """The same spec as ``openapi.json``, as YAML: ``application/yaml`` to a client that asks for it,
    plain text otherwise, so a browser shows it instead of downloading it."""
    import yaml

    schema = json.loads(json.dumps(api.get_openapi_schema()))  # what openapi.json says, keys and all
    text = yaml.safe_dump(schema, sort_keys=False, allow_unicode=True)
    media_type = (
        "application/yaml" if "application/yaml" in request.headers.get("Accept", "") else "text/plain"
    )
    return HttpResponse(text, content_type=f"{media_type}; charset=utf-8")
