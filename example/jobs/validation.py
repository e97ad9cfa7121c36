"""Validation of job requests from the API (the form validates the page's input)."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from jobs.models import JobKind

#: Longest sleep a timed_work job may ask for (the demo's task time limit is longer).
TIMED_WORK_MAX = 60


class JobRequestError(ValueError):
    """The request cannot become a job; the message tells the client why."""


def total_message() -> str:
    return f"total must be a whole number from {settings.JOBS_USERS_MIN} to {settings.JOBS_USERS_MAX}"


def parse_job_request(payload: Any) -> tuple[JobKind, dict[str, Any]]:
    if not isinstance(payload, dict):
        raise JobRequestError("the body must be a JSON object")
    kinds = ", ".join(JobKind.values)
    kind_value = payload.get("kind")
    if kind_value not in JobKind.values:
        raise JobRequestError(f"kind must be one of {kinds}; got {kind_value!r}")
    kind = JobKind(kind_value)
    allowed = {"kind", "fail"} | {JobKind.RANDOM_USERS: {"total"}, JobKind.TIMED_WORK: {"seconds"}}.get(
        kind, set()
    )
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise JobRequestError(f"unknown field(s) for {kind.value}: {', '.join(unknown)}")
    params: dict[str, Any] = {}
    if kind == JobKind.RANDOM_USERS:
        total = payload.get("total")
        if (
            isinstance(total, bool)
            or not isinstance(total, int)
            or not settings.JOBS_USERS_MIN <= total <= settings.JOBS_USERS_MAX
        ):
            raise JobRequestError(f"{total_message()}; got {total!r}")
        params["total"] = total
    if kind == JobKind.TIMED_WORK:
        seconds = payload.get("seconds")
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 <= seconds <= TIMED_WORK_MAX
        ):
            raise JobRequestError(f"seconds must be a number from 0 to {TIMED_WORK_MAX}; got {seconds!r}")
        params["seconds"] = seconds
    fail = payload.get("fail", False)
    if not isinstance(fail, bool):
        raise JobRequestError(f"fail must be true or false; got {fail!r}")
    if fail:
        params["fail"] = True
    return kind, params
