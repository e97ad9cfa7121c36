"""Creating jobs and handing them to Celery: the one way in for pages and the API.

The job row is the source of truth (an outbox).  It is committed before its message is
published, and every later step is one conditional ``UPDATE``, so these outcomes are the
only ones:

* the publish is confirmed: the API answers 202 and the job runs (once in effect);
* the publish fails and the job is still untouched: it is marked refused (FAILURE) in the
  same statement that frees its ``Idempotency-Key``; the API answers 503 and the job never
  runs -- a message that reaches the broker later is skipped by the worker (the job is
  final);
* the publish fails but a worker (or the sweeper) got to the job first: it runs, and the
  API answers 202;
* the web process dies between commit and publish, or the broker loses the message (a
  Redis crash inside its fsync window): :func:`sweep_outbox` publishes it again once it
  has shown no sign of life for a while and the broker holds it nowhere.

How the sweeper tells "nowhere" depends on the broker: it looks into Redis, so on Redis the
request records nothing after its publish (no database write per enqueue that nothing reads);
RabbitMQ cannot be looked into, so there the request records the broker's confirm
(``published_at``) and the sweeper publishes again only what was never confirmed.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import timedelta
from typing import Any

from celery import Celery, Task
from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from celery_fleet import outbox
from jobs import tasks
from jobs.models import FINAL_STATES, Job, JobKind, JobState

logger = logging.getLogger(__name__)

TASKS: dict[str, Task[Any, Any]] = {
    JobKind.RANDOM_USERS: tasks.generate_random_users,
    JobKind.EXPORT_USERS: tasks.export_users,
    JobKind.TIMED_WORK: tasks.run_timed_job,
}
IDEMPOTENCY_KEY_MAX = 200
#: Printable ASCII without spaces, 1 to 200 characters: the one rule, here and in the API's schema.
IDEMPOTENCY_KEY_PATTERN = rf"^[!-~]{{1,{IDEMPOTENCY_KEY_MAX}}}$"
#: Most jobs one sweep looks at (the oldest first).
SWEEP_BATCH = 500


class EnqueueError(RuntimeError):
    """The broker did not take the job; the job is recorded as refused and will not run."""


class IdempotencyKeyError(ValueError):
    """A bad ``Idempotency-Key`` (400) or one already used for a different request (409)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key) is None:
        raise IdempotencyKeyError(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters without spaces",
            400,
        )
    return key


def submit_job(kind: JobKind, params: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
    """Record the job, then publish its task with success and error follow-ups.

    The row is committed first so a fast worker always finds it; the job id is the task
    id, so the message, the row and any redelivery share one idempotency key.  With an
    ``idempotency_key`` a second call returns the first job instead of creating another.
    Raises :class:`EnqueueError` when the job was refused (it will not run).
    """
    if transaction.get_connection().in_atomic_block:
        # Inside an outer transaction the worker could pick the task up before the row exists.
        raise RuntimeError("submit_job must not run inside a transaction")
    key = check_idempotency_key(idempotency_key)
    if key is not None:
        existing = Job.objects.filter(idempotency_key=key).first()
        if existing is not None:
            return _replayed(existing, kind, params)
    try:
        job = Job.objects.create(kind=kind, params=params, idempotency_key=key)
    except IntegrityError:
        # The same key in a concurrent request: that request's job is the one.
        return _replayed(Job.objects.get(idempotency_key=key), kind, params)
    try:
        publish(job)
    except Exception as exc:
        logger.warning("could not enqueue job %s: %s", job.id, exc)
        if refuse(job, f"not accepted: the broker did not take the job ({exc})"):
            raise EnqueueError(f"the broker did not accept the job: {exc}") from exc
        logger.info("job %s: the publish failed but the job was taken already; it runs", job.id)
        return job
    if not outbox.looks_into_broker(celery_app()):
        # The confirm is the sweep's only evidence on this broker (RabbitMQ): record it.
        try:
            Job.objects.filter(pk=job.pk).update(published_at=timezone.now())
        except DatabaseError as exc:
            # The broker has the job, so it runs; unrecorded, the sweep publishes it once more
            # later, which the task's idempotency makes harmless.
            logger.warning("job %s: published, but its confirm could not be recorded: %s", job.id, exc)
    return job


def _replayed(job: Job, kind: JobKind, params: dict[str, Any]) -> Job:
    if job.kind != kind or job.params != params:
        raise IdempotencyKeyError("this Idempotency-Key was already used for a different request", 409)
    return job


def celery_app() -> Celery:
    from fleetsite.celery import app

    return app


def publish(job: Job) -> None:
    """Publish the job's message with its follow-ups; returns once the broker took it."""
    TASKS[job.kind].apply_async(
        args=(str(job.id),),
        task_id=str(job.id),
        link=tasks.on_job_success.si(None, str(job.id)),
        link_error=tasks.on_job_failure.s(job_id=str(job.id)),
        retry=True,
        # One retry on a fresh connection (a pooled one may be stale after a broker restart); a hung
        # broker then costs the request two socket timeouts, not more.
        retry_policy={"max_retries": 1, "interval_start": 0.2},
    )


def refuse(job: Job, reason: str) -> bool:
    """Mark a job that nobody took as refused (final, key freed); False if it was taken meanwhile."""
    return bool(
        Job.objects.filter(pk=job.pk, state=JobState.PENDING, published_at__isnull=True).update(
            state=JobState.FAILURE, error=reason, finished_at=timezone.now(), idempotency_key=None
        )
    )


def _last_sign_of_life(job: Job) -> float:
    moments = [job.created_at, job.published_at, job.started_at]
    return max(m.timestamp() for m in moments if m is not None)


def sweep_outbox(now: float | None = None) -> int:
    """Publish again the unfinished jobs whose message the broker holds nowhere; returns how many."""
    app = celery_app()
    now = time.time() if now is None else now
    bound = settings.OUTBOX_REPUBLISH_AFTER
    quiet_since = timezone.now() - timedelta(seconds=bound)
    rows = list(
        Job.objects.exclude(state__in=FINAL_STATES)
        .filter(created_at__lt=quiet_since)
        .filter(Q(published_at__isnull=True) | Q(published_at__lt=quiet_since))
        .filter(Q(started_at__isnull=True) | Q(started_at__lt=quiet_since))
        .order_by("created_at")[:SWEEP_BATCH]
    )
    if not rows:
        return 0
    queue_of = {kind: outbox.task_queue(app, task.name) for kind, task in TASKS.items()}
    pending = {
        str(job.id): outbox.Pending(
            task_id=str(job.id),
            queue=queue_of[job.kind],
            since=_last_sign_of_life(job),
            published=job.published_at is not None,
        )
        for job in rows
    }
    view = outbox.view_of_broker(app, sorted(set(queue_of.values())))
    republished = 0
    for lost in outbox.lost(pending.values(), view, now=now, bound=bound):
        job = next(j for j in rows if str(j.id) == lost.task_id)
        # Only if nothing happened to the job since the rows were read.  No claim is written
        # before the publish: a claim that outlived a failed publish (the broker down, this
        # process killed) would make the job look published, and on RabbitMQ a published job is
        # never swept again.  Two sweeps publishing one job is harmless (the task is idempotent).
        unchanged = Job.objects.filter(
            pk=job.pk, state=job.state, published_at=job.published_at, started_at=job.started_at
        ).exists()
        if not unchanged:
            continue
        logger.warning(
            "outbox: job %s (%s, %s) has shown no sign of life for %.0fs and the broker holds it nowhere: "
            "publishing it again",
            job.id,
            job.kind,
            job.state,
            now - lost.since,
        )
        try:
            publish(job)
        except Exception as exc:
            logger.warning(
                "outbox: could not publish job %s again (%s); the next sweep tries again", job.id, exc
            )
            continue
        Job.objects.filter(pk=job.pk).update(published_at=timezone.now(), republishes=F("republishes") + 1)
        republished += 1
    return republished
