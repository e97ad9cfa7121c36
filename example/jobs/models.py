from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import User
from django.db import models


class JobKind(models.TextChoices):
    RANDOM_USERS = "random_users", "Generate random users"
    EXPORT_USERS = "export_users", "Export users as CSV"
    TIMED_WORK = "timed_work", "Sleep, then record the effect (load and fault tests)"


class JobState(models.TextChoices):
    PENDING = "PENDING"
    STARTED = "STARTED"
    PROGRESS = "PROGRESS"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


FINAL_STATES = frozenset({JobState.SUCCESS, JobState.FAILURE})
#: What the pages call each state (the API keeps the values).
STATE_LABELS = {
    JobState.PENDING: "Queued",
    JobState.STARTED: "Started",
    JobState.PROGRESS: "Running",
    JobState.SUCCESS: "Done",
    JobState.FAILURE: "Failed",
}


class Job(models.Model):
    """One unit of slow work. Its id is also the Celery task id and the idempotency key.

    The row is the source of truth (an outbox): it is committed before its message is
    published, and the periodic sweeper publishes again a job whose message the broker
    lost (``jobs.services.sweep_outbox``).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=32, choices=JobKind.choices)
    params = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.PENDING)
    progress = models.PositiveSmallIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    #: Names of the follow-up tasks that ran (``on_success`` / ``on_failure``).
    callbacks_ran = models.JSONField(default=list, blank=True)
    #: How many times a worker started this job: above 1 means it was redelivered.
    attempts = models.PositiveIntegerField(default=0)
    #: The client's ``Idempotency-Key``: a retried POST with it returns this job.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    #: When a publish of the job's message was last recorded: the request's publish on a broker
    #: whose confirm is the outbox's evidence (RabbitMQ), and every publish by the outbox sweeper.
    #: On Redis the request does not record its publish (the sweeper looks into Redis instead),
    #: so None there means "not published again", not "never published".
    published_at = models.DateTimeField(null=True, blank=True)
    #: Times the outbox sweeper published the job again (the broker had lost it or never confirmed it).
    republishes = models.PositiveIntegerField(default=0)
    #: The worker (Celery hostname) that last started the job.
    worker = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        indexes = (models.Index(fields=("state", "created_at")),)

    def __str__(self) -> str:
        return f"{self.kind} {self.id} ({self.state})"

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def state_label(self) -> str:
        return STATE_LABELS.get(JobState(self.state), self.state)

    def as_api(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "kind": self.kind,
            "state": self.state,
            "progress": self.progress,
            "result": self.result,
            "error": self.error or None,
            "params": self.params,
            "callbacks_ran": self.callbacks_ran,
            "attempts": self.attempts,
            "republishes": self.republishes,
            "worker": self.worker or None,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


def public_users() -> models.QuerySet[User]:
    """The users pages, the API and exports may show: never staff or superuser accounts."""
    return User.objects.filter(is_staff=False, is_superuser=False)


class GeneratedUser(models.Model):
    """Marks a user as made by a job: (job, index) is unique, so a rerun makes no duplicates."""

    user = models.OneToOneField("auth.User", on_delete=models.CASCADE, related_name="generated_by")
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="generated_users")
    index = models.PositiveIntegerField()

    class Meta:
        constraints = (models.UniqueConstraint(fields=("job", "index"), name="unique_user_per_job_index"),)

    def __str__(self) -> str:
        return f"user {self.user_id} from job {self.job_id} #{self.index}"


class ExportFile(models.Model):
    """A finished CSV report. Kept in the database so every web pod can serve it."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="export_file")
    filename = models.CharField(max_length=200)
    content = models.BinaryField()
    rows = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return self.filename


class WorkRun(models.Model):
    """Ledger of the load-test work (``timed_work`` tasks and jobs), one row per idempotency key.

    ``starts`` counts runs that began, ``completions`` runs that reached the end, and
    ``effects`` how often the effect was applied.  The idempotency guard (``done`` for a
    bare task, the job's transition to SUCCESS for a job) is separate from the counter, so
    a broken guard shows as ``effects`` above 1 instead of being masked.
    """

    key = models.CharField(max_length=64, unique=True)
    #: Deliveries of the job's message, including those that found it finished and did nothing.
    deliveries = models.PositiveIntegerField(default=0)
    starts = models.PositiveIntegerField(default=0)
    effects = models.PositiveIntegerField(default=0)
    completions = models.PositiveIntegerField(default=0)
    #: The bare task's idempotency guard: set by the first run that applies the effect.
    done = models.BooleanField(default=False)
    #: Unix time of each start, space-separated: how long redeliveries took.
    start_times = models.TextField(blank=True, default="")
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.key}: {self.effects} effect(s) in {self.starts} start(s)"
