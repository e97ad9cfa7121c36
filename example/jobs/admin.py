"""The admin: jobs and their records are read-only (workers write them; a hand edit would lie).

django-celery-beat's schedule pages only matter when beat reads its tables
(``CELERY_BEAT_SCHEDULER`` a ``DatabaseScheduler``); with the default RedBeat scheduler the
schedule comes from ``CELERY_BEAT_SCHEDULE`` in settings, so the pages are hidden rather than
left to edit rows nothing reads.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest

from jobs.models import ExportFile, Job, WorkRun

admin.site.site_header = "celery-fleet administration"
admin.site.site_title = "celery-fleet admin"
admin.site.index_title = "Jobs, users and what the workers recorded"


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Look, filter and delete; never add or change by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "state", "progress", "attempts", "created_at", "finished_at")
    list_filter = ("kind", "state")
    search_fields = ("id",)


@admin.register(ExportFile)
class ExportFileAdmin(ReadOnlyAdmin):
    list_display = ("filename", "rows", "created_at")
    exclude = ("content",)


@admin.register(WorkRun)
class WorkRunAdmin(ReadOnlyAdmin):
    list_display = ("key", "starts", "effects", "completions", "finished_at")


def beat_reads_the_database(scheduler: str) -> bool:
    return scheduler.rsplit(".", 1)[-1].endswith("DatabaseScheduler")


if not beat_reads_the_database(settings.CELERY_BEAT_SCHEDULER):
    from django_celery_beat import models as beat_models

    for model in (
        beat_models.PeriodicTask,
        beat_models.IntervalSchedule,
        beat_models.CrontabSchedule,
        beat_models.SolarSchedule,
        beat_models.ClockedSchedule,
    ):
        if admin.site.is_registered(model):
            admin.site.unregister(model)
