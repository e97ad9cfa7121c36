from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import User
from django.db import models


class JobKind(models.TextChoices):
    RANDOM_USERS = "random_users", "Generate random users"
    EXPORT_USERS = "export_users", "Export users as CSV"


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
    """One unit of slow work. Its id is also the Celery task id and the idempotency key."""

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
    """Ledger of the load-test task ``jobs.tasks.timed_work``, one row per idempotency key.

    ``starts`` counts deliveries; ``effects`` counts how often the task's effect was
    applied, which the idempotency check keeps at 1 however often it is redelivered.
    """

    key = models.CharField(max_length=64, unique=True)
    starts = models.PositiveIntegerField(default=0)
    effects = models.PositiveIntegerField(default=0)
    completions = models.PositiveIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.key}: {self.effects} effect(s) in {self.starts} start(s)"
