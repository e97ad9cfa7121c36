"""A Celery app with Celery's defaults and the example's job task, as a tutorial defines them."""

import os

from celery import Celery

app = Celery("textbook", broker=os.environ["CELERY_BROKER_URL"])


@app.task(name="jobs.tasks.generate_random_users")
def generate_random_users(job_id: str) -> None:
    """Never runs here: the bench measures the enqueue path (no worker)."""
