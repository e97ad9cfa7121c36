"""Creating jobs and handing them to Celery: the one way in for pages and the API."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from jobs import tasks
from jobs.models import Job, JobKind

logger = logging.getLogger(__name__)

TASKS = {
    JobKind.RANDOM_USERS: tasks.generate_random_users,
    JobKind.EXPORT_USERS: tasks.export_users,
}


class EnqueueError(RuntimeError):
    """The broker did not take the job; the job is recorded as failed."""


def submit_job(kind: JobKind, params: dict[str, Any]) -> Job:
    """Record the job, then publish its task with success and error follow-ups.

    The row is committed first so a fast worker always finds it; the job id is the task
    id, so the message, the row and any redelivery share one idempotency key.
    """
    if transaction.get_connection().in_atomic_block:
        # Inside an outer transaction the worker could pick the task up before the row exists.
        raise RuntimeError("submit_job must not run inside a transaction")
    job = Job.objects.create(kind=kind, params=params)
    task = TASKS[kind]
    try:
        task.apply_async(
            args=(str(job.id),),
            task_id=str(job.id),
            link=tasks.on_job_success.si(None, str(job.id)),
            link_error=tasks.on_job_failure.s(job_id=str(job.id)),
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except Exception as exc:
        logger.exception("could not enqueue job %s", job.id)
        Job.objects.filter(pk=job.pk).update(state="FAILURE", error=f"broker unavailable: {exc}")
        raise EnqueueError(f"the broker did not accept the job: {exc}") from exc
    return job
