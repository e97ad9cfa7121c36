"""The workers' tasks. Each is safe to run twice: the job id is the idempotency key.

A redelivered ``generate_random_users`` skips the (job, index) pairs it already made;
``export_users`` overwrites its one report; the callbacks record themselves once.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import time
from typing import Any

from celery import shared_task
from django.conf import settings
from django.core import management
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from datetime import timedelta
from faker import Faker

from jobs import progress
from jobs.models import ExportFile, GeneratedUser, Job, WorkRun

logger = logging.getLogger(__name__)

USERS_BATCH = 10
EXPORT_CHUNK = 200


class DemoFailure(RuntimeError):
    """Raised by jobs submitted with ``fail: true`` to show the error path."""


def _fail_if_asked(job: Job, done: int, total: int) -> None:
    if job.params.get("fail") and done * 2 >= total:
        raise DemoFailure(f"failed on purpose after {done} of {total} (the job was submitted with fail=true)")


@shared_task(bind=True, name="jobs.tasks.generate_random_users")
def generate_random_users(self: Any, job_id: str) -> dict[str, Any]:
    job = progress.mark_started(job_id)
    total = int(job.params["total"])
    try:
        fake = Faker()
        fake.seed_instance(job.id.int)  # the same job makes the same people on every delivery
        existing = set(GeneratedUser.objects.filter(job=job).values_list("index", flat=True))
        created = 0
        for start in range(0, total, USERS_BATCH):
            batch = range(start, min(start + USERS_BATCH, total))
            profiles = [(i, fake.simple_profile()) for i in batch]  # draw for every index: stable sequence
            with transaction.atomic():
                for i, profile in profiles:
                    if i in existing:
                        continue
                    first, _, last = profile["name"].partition(" ")
                    user = User.objects.create_user(
                        username=f"{profile['username']}-{job.id.hex[:8]}-{i}",
                        email=profile["mail"],
                        first_name=first[:150],
                        last_name=last[:150],
                    )
                    GeneratedUser.objects.create(user=user, job=job, index=i)
                    created += 1
            time.sleep(settings.JOBS_STEP_DELAY)
            progress.report_progress(job.id, batch.stop, total)
            _fail_if_asked(job, batch.stop, total)
        result = {"total": total, "created": created, "already_present": len(existing)}
    except Exception as exc:
        progress.mark_failed(job.id, f"{type(exc).__name__}: {exc}")
        raise
    progress.mark_succeeded(job.id, result)
    return result


@shared_task(bind=True, name="jobs.tasks.export_users")
def export_users(self: Any, job_id: str) -> dict[str, Any]:
    job = progress.mark_started(job_id)
    try:
        users = User.objects.order_by("id")
        total = users.count()
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["id", "username", "email", "first_name", "last_name", "date_joined"])
        done = 0
        for start in range(0, max(total, 1), EXPORT_CHUNK):
            chunk = users.values_list("id", "username", "email", "first_name", "last_name", "date_joined")[
                start : start + EXPORT_CHUNK
            ]
            for row in chunk:
                writer.writerow([*row[:5], row[5].isoformat()])
                done += 1
            time.sleep(settings.JOBS_STEP_DELAY)
            progress.report_progress(job.id, done, total)
            _fail_if_asked(job, done, total)
        filename = f"users-{timezone.now():%Y%m%d-%H%M%S}-{job.id.hex[:8]}.csv"
        ExportFile.objects.update_or_create(
            job=job,
            defaults={"filename": filename, "content": buffer.getvalue().encode("utf-8"), "rows": done},
        )
        result = {"rows": done, "filename": filename}
    except Exception as exc:
        progress.mark_failed(job.id, f"{type(exc).__name__}: {exc}")
        raise
    progress.mark_succeeded(job.id, result)
    return result


@shared_task(name="jobs.tasks.on_job_success")
def on_job_success(result: Any, job_id: str) -> None:
    """Follow-up linked with ``link=``: runs after the job succeeded."""
    progress.record_callback(job_id, "on_success")


@shared_task(name="jobs.tasks.on_job_failure")
def on_job_failure(request: Any, exc: Any, traceback: Any, job_id: str) -> None:
    """Follow-up linked with ``link_error=``: runs after the job failed."""
    logger.warning("job %s failed: %s", job_id, exc)
    progress.record_callback(job_id, "on_failure")


@shared_task(name="jobs.tasks.timed_work")
def timed_work(key: str, seconds: float) -> str:
    """Load-test task: sleeps ``seconds``, then applies its effect once per ``key``."""
    WorkRun.objects.get_or_create(key=key)
    WorkRun.objects.filter(key=key).update(starts=F("starts") + 1)
    time.sleep(seconds)
    with transaction.atomic():
        applied = WorkRun.objects.filter(key=key, effects=0).update(effects=1, finished_at=timezone.now())
        WorkRun.objects.filter(key=key).update(completions=F("completions") + 1)
    if not applied:
        logger.info("timed_work %s: redelivered after its effect was applied; nothing to do", key)
    return key


@shared_task(name="jobs.tasks.noop")
def noop() -> None:
    """Does nothing: for throughput benchmarks."""


@shared_task(name="jobs.tasks.cleanup_exports")
def cleanup_exports() -> int:
    """Periodic: remove export reports older than ``EXPORT_MAX_AGE_HOURS``."""
    cutoff = timezone.now() - timedelta(hours=settings.EXPORT_MAX_AGE_HOURS)
    deleted, _ = ExportFile.objects.filter(created_at__lt=cutoff).delete()
    logger.info("cleanup_exports: removed %d export(s) older than %s", deleted, cutoff.isoformat())
    return deleted


@shared_task(name="jobs.tasks.backup_database")
def backup_database() -> str:
    """Periodic: dump the database to ``BACKUP_DIR``; one file per hour, the last ``BACKUP_KEEP`` kept.

    The file is named after the hour it belongs to and written by rename, so a rerun in
    the same hour replaces it instead of adding another.
    """
    folder = settings.BACKUP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"backup-{timezone.now():%Y%m%d-%H}.json.gz"
    tmp = target.with_suffix(".tmp")
    out = io.StringIO()
    management.call_command(
        "dumpdata", "--natural-foreign", "--exclude=contenttypes", "--exclude=auth.permission",
        "--exclude=sessions", stdout=out,
    )
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        fh.write(out.getvalue())
    tmp.replace(target)
    for old in sorted(folder.glob("backup-*.json.gz"))[: -settings.BACKUP_KEEP]:
        old.unlink(missing_ok=True)
    logger.info("backup_database: wrote %s", target)
    return str(target)
