from django.db import migrations
from django.db.models import F


def count_republishes_only(apps, schema_editor):  # type: ignore[no-untyped-def]
    # ``publishes`` counted the request's own publish too; ``republishes`` counts the sweeper's.
    apps.get_model("jobs", "Job").objects.filter(republishes__gt=0).update(republishes=F("republishes") - 1)


def count_every_publish(apps, schema_editor):  # type: ignore[no-untyped-def]
    apps.get_model("jobs", "Job").objects.filter(published_at__isnull=False).update(
        republishes=F("republishes") + 1
    )


class Migration(migrations.Migration):
    """The request no longer records its own publish on Redis (the outbox sweeper looks into
    Redis instead): the row counts only the sweeper's publishes."""

    dependencies = [
        ("jobs", "0002_outbox_and_idempotency"),
    ]

    operations = [
        migrations.RenameField(model_name="job", old_name="publishes", new_name="republishes"),
        migrations.RunPython(count_republishes_only, count_every_publish),
    ]
