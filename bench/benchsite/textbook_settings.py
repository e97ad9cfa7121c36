"""The project's settings for the textbook baseline: the same Django, Celery exactly as shipped.

``POST /bench/textbook`` is what a tutorial writes: ``Job.objects.create(...)`` then
``task.delay(job.id)`` on a Celery app with Celery's defaults (``benchsite.textbook``).  The
project's settings module imports its Celery app, which installs celery-fleet's publish hooks
in this process (``celery_fleet.lifecycle.install``: the one-round-trip publish, the publish
stamp, follow-up routing, sent counting); this server takes them out again, so its publishes
are kombu's and Celery's own.  Everything else (middleware, database, gunicorn) is the
project's, so the difference to ``POST /api/jobs/`` is celery-fleet's enqueue path.
"""

from celery.signals import after_task_publish, before_task_publish
from kombu.transport import redis as kombu_redis

from benchsite.settings import *  # noqa: F403
from celery_fleet import publish

ROOT_URLCONF = "benchsite.urls"

kombu_redis.Channel.basic_publish = publish._kombu_basic_publish  # type: ignore[method-assign]
for signal in (before_task_publish, after_task_publish):
    signal.receivers.clear()
    signal.sender_receivers_cache.clear()
