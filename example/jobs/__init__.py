"""The example app: slow jobs handed to Celery workers, with pages and a JSON API."""
