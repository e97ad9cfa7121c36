"""celery-fleet: an autoscaling, loss-free Celery worker fleet for Django."""

__version__ = "0.1.0"
