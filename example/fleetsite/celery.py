"""The Celery app: configuration comes from Django settings (``CELERY_*``)."""

import os

from celery import Celery

from celery_fleet.lifecycle import install as install_fleet_lifecycle

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleetsite.settings")

app = Celery("fleetsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
install_fleet_lifecycle(app)
