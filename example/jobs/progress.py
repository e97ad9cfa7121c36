"""State transitions of a Job, written by the worker as the task runs.

Every transition is one conditional ``UPDATE``: a finished job (SUCCESS, FAILURE -- which
includes a job the API refused) is never started or finished again, whichever delivery
of its message arrives, and however many arrive at once.  Final states and follow-up callbacks
are announced (``jobs.notify``) once committed, so long-polls waiting on the job answer at once.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import F
from django.utils import timezone

from jobs import notify
from jobs.models import FINAL_STATES, Job, JobState


def claim(job_id: UUID | str, worker: str = "") -> Job | None:
    """Start a delivery of the job: the Job, or None if it is finished (or gone) -- then skip it."""
    started = (
        Job.objects.filter(pk=job_id)
        .exclude(state__in=FINAL_STATES)
        .update(
            state=JobState.STARTED,
            started_at=timezone.now(),
            attempts=F("attempts") + 1,
            progress=0,
            worker=worker or "",
        )
    )
    return Job.objects.get(pk=job_id) if started else None


def report_progress(job_id: UUID | str, done: int, total: int) -> int:
    percent = 100 if total <= 0 else min(100, int(done * 100 / total))
    Job.objects.filter(pk=job_id).exclude(state__in=FINAL_STATES).update(
        state=JobState.PROGRESS, progress=percent
    )
    return percent


def mark_succeeded(job_id: UUID | str, result: dict[str, Any]) -> bool:
    """Finish the job; False if another delivery finished it first (then this one changes nothing)."""
    return _finish(job_id, state=JobState.SUCCESS, progress=100, result=result, error="")


def mark_failed(job_id: UUID | str, error: str) -> bool:
    return _finish(job_id, state=JobState.FAILURE, error=error)


def _finish(job_id: UUID | str, **final: Any) -> bool:
    """One conditional UPDATE to a final state, announced once committed (long-polls wake)."""
    unfinished = Job.objects.filter(pk=job_id).exclude(state__in=FINAL_STATES)
    finished = bool(unfinished.update(finished_at=timezone.now(), **final))
    if finished:
        notify.job_changed(job_id)
    return finished


def record_callback(job_id: UUID | str, name: str) -> None:
    job = Job.objects.get(pk=job_id)
    if name not in job.callbacks_ran:  # a redelivered callback records itself once
        job.callbacks_ran = [*job.callbacks_ran, name]
        job.save(update_fields=["callbacks_ran"])
        notify.job_changed(job_id)
