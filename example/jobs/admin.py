from django.contrib import admin

from jobs.models import ExportFile, Job, WorkRun


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("id", "kind", "state", "progress", "attempts", "created_at", "finished_at")
    list_filter = ("kind", "state")
    readonly_fields = ("id", "created_at", "started_at", "finished_at")


@admin.register(ExportFile)
class ExportFileAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("filename", "rows", "created_at")
    exclude = ("content",)


@admin.register(WorkRun)
class WorkRunAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("key", "starts", "effects", "completions", "finished_at")
