"""The workers' tasks. Each is safe to run twice: the job id is the idempotency key.

A delivery of a finished job (or of one the API refused) does nothing: ``progress.claim``
returns None.  A redelivered ``generate_random_users`` skips the (job, index) pairs it
already made; ``export_users`` overwrites its one report; the callbacks record themselves
once; ``run_timed_job`` applies its effect only with the job's transition to SUCCESS.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.contrib.auth.models import User
from django.core import management
from django.db import IntegrityError, transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone
from faker import Faker

from jobs import progress
from jobs.models import ExportFile, GeneratedUser, Job, WorkRun, public_users

logger = logging.getLogger(__name__)

USERS_BATCH = 10
EXPORT_CHUNK = 200


class DemoFailure(RuntimeError):
    """Raised by jobs submitted with ``fail: true`` to show the error path."""


def _fail_if_asked(job: Job, done: int, total: int) -> None:
    if job.params.get("fail") and done * 2 >= total:
        raise DemoFailure(f"failed on purpose after {done} of {total} (the job was submitted with fail=true)")


def _skipped(job_id: str) -> dict[str, Any]:
    logger.info("job %s is finished (or was refused, or is gone): this delivery does nothing", job_id)
    return {"skipped": True}


@shared_task(bind=True, name="jobs.tasks.generate_random_users")
def generate_random_users(self: Any, job_id: str) -> dict[str, Any]:
    job = progress.claim(job_id, self.request.hostname)
    if job is None:
        return _skipped(job_id)
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
                    first, _, last = str(profile["name"]).partition(" ")
                    user = User.objects.create_user(
                        username=f"{profile['username']}-{job.id.hex[:8]}-{i}",
                        email=str(profile["mail"]),
                        first_name=first[:150],
                        last_name=last[:150],
                    )
                    GeneratedUser.objects.create(user=user, job=job, index=i)
                    created += 1
            time.sleep(settings.JOBS_STEP_DELAY)
            progress.report_progress(job.id, batch.stop, total)
            _fail_if_asked(job, batch.stop, total)
        result = {"total": total, "created": created, "already_present": len(existing)}
    except IntegrityError:
        # Another delivery of this job is making the same users right now: leave it to that one.
        logger.warning("job %s: another delivery is running it; this one stops", job.id)
        return {"skipped": True}
    except Exception as exc:
        progress.mark_failed(job.id, f"{type(exc).__name__}: {exc}")
        raise
    progress.mark_succeeded(job.id, result)
    return result


@shared_task(bind=True, name="jobs.tasks.export_users")
def export_users(self: Any, job_id: str) -> dict[str, Any]:
    job = progress.claim(job_id, self.request.hostname)
    if job is None:
        return _skipped(job_id)
    try:
        users = public_users().order_by("id")  # staff accounts are never exported
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


def _timed(key: str, seconds: float, apply_once: Callable[[], bool]) -> bool:
    """Sleep, then apply the effect if ``apply_once`` (the idempotency guard) says this run is first.

    The guard and the effect counter are separate, and run in one transaction with it: a
    guard that let two runs through would show as ``effects`` 2 in the ledger.
    """
    WorkRun.objects.filter(key=key).update(
        starts=F("starts") + 1, start_times=Concat(F("start_times"), Value(f"{time.time():.3f} "))
    )
    time.sleep(seconds)
    with transaction.atomic():
        applied = apply_once()
        if applied:
            WorkRun.objects.filter(key=key).update(effects=F("effects") + 1, finished_at=timezone.now())
        WorkRun.objects.filter(key=key).update(completions=F("completions") + 1)
    if not applied:
        logger.info("timed work %s: a run already applied its effect; nothing to do", key)
    return applied


def _delivered(key: str) -> None:
    WorkRun.objects.get_or_create(key=key)
    WorkRun.objects.filter(key=key).update(deliveries=F("deliveries") + 1)


@shared_task(name="jobs.tasks.timed_work")
def timed_work(key: str, seconds: float) -> str:
    """Load-test task: sleeps ``seconds``, then applies its effect once per ``key``."""
    _delivered(key)
    _timed(key, seconds, lambda: bool(WorkRun.objects.filter(key=key, done=False).update(done=True)))
    return key


@shared_task(bind=True, name="jobs.tasks.run_timed_job")
def run_timed_job(self: Any, job_id: str) -> dict[str, Any]:
    """The ``timed_work`` job kind: the same ledger, keyed by the job id, guarded by the job's state."""
    _delivered(job_id)
    job = progress.claim(job_id, self.request.hostname)
    if job is None:
        return _skipped(job_id)
    seconds = float(job.params.get("seconds", 0))
    result = {"seconds": seconds}
    if job.params.get("fail"):
        time.sleep(seconds)
        progress.mark_failed(job.id, "DemoFailure: failed on purpose (the job was submitted with fail=true)")
        raise DemoFailure("failed on purpose (the job was submitted with fail=true)")
    _timed(str(job.id), seconds, lambda: progress.mark_succeeded(job.id, result))
    return result


@shared_task(name="jobs.tasks.sweep_outbox")
def sweep_outbox() -> int:
    """Periodic: publish again the jobs whose message the broker lost (see ``jobs.services``)."""
    from jobs.services import sweep_outbox as sweep

    return sweep()


@shared_task(name="jobs.tasks.noop")
def noop() -> None:
    """Does nothing: for throughput benchmarks."""


@shared_task(name="jobs.tasks.cleanup_exports")
def cleanup_exports() -> int:
    """Periodic: remove export reports older than ``EXPORT_MAX_AGE_HOURS``; returns how many.

    Idempotent: a second run (or a duplicate message) finds nothing older left to delete.
    Deletes in small batches so a large backlog never holds the database's write lock for
    long (SQLite takes it for the whole of a transaction).
    """
    cutoff = timezone.now() - timedelta(hours=settings.EXPORT_MAX_AGE_HOURS)
    old = ExportFile.objects.filter(created_at__lt=cutoff)
    batch_size = 500
    deleted = 0
    while batch := list(old.values_list("pk", flat=True)[:batch_size]):
        removed, _ = ExportFile.objects.filter(pk__in=batch, created_at__lt=cutoff).delete()
        deleted += removed
    logger.info("cleanup_exports: removed %d export(s) older than %s", deleted, cutoff.isoformat())
    return deleted


@shared_task(name="jobs.tasks.backup_database")
def backup_database() -> str:
    """Periodic: dump the database to ``BACKUP_DIR``; one file per hour, the last ``BACKUP_KEEP`` kept.

    Idempotent: the file is named after the (UTC) hour it belongs to and appears by an atomic
    rename, so a rerun in the same hour replaces it instead of adding another, and a reader
    never sees half a file.  Each run writes its own temporary file (two runs at once cannot
    mix their output); a run killed mid-dump leaves only that temporary file, removed by a
    later run once it is older than the task time limit.  The dump streams to disk, and on
    PostgreSQL it reads one consistent snapshot.  Restore with
    ``python -m django loaddata <file>`` (or ``python example/manage.py loaddata <file>``).
    """
    import contextlib
    import os
    import uuid

    from django.db import connection

    folder = settings.BACKUP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"backup-{timezone.now():%Y%m%d-%H}.json.gz"
    tmp = folder / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    postgres = connection.vendor == "postgresql"
    try:
        snapshot = transaction.atomic() if postgres else contextlib.nullcontext()
        with gzip.open(tmp, "wt", encoding="utf-8") as fh, snapshot:
            if postgres:
                with connection.cursor() as cursor:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            management.call_command(
                "dumpdata",
                "--natural-foreign",
                "--exclude=contenttypes",
                "--exclude=auth.permission",
                "--exclude=sessions",
                stdout=fh,
            )
        with tmp.open("rb") as written:
            os.fsync(written.fileno())
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    stale_after = time.time() - float(getattr(settings, "CELERY_TASK_TIME_LIMIT", 3600))
    for leftover in folder.glob(".backup-*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if leftover.stat().st_mtime < stale_after:
                leftover.unlink()
    keep = int(settings.BACKUP_KEEP)
    for old in sorted(folder.glob("backup-*.json.gz"))[:-keep]:
        old.unlink(missing_ok=True)
    logger.info("backup_database: wrote %s (%d bytes)", target, target.stat().st_size)
    return str(target)
