"""The example Django project that runs on celery-fleet."""

from fleetsite.celery import app as celery_app

__all__ = ("celery_app",)
