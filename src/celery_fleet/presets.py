"""Safe-delivery Celery settings any Django project can adopt in one line::

    from celery_fleet.presets import safe_delivery_settings
    globals().update(safe_delivery_settings(broker_url=CELERY_BROKER_URL, timings=TIMINGS))

The names carry Django's ``CELERY_`` namespace (``app.config_from_object(settings,
namespace="CELERY")``).  Each value says why it is there.
"""

from __future__ import annotations

from typing import Any

from celery_fleet.timings import RESTORE_SWEEP_SECONDS, Timings
from celery_fleet.transport import TRANSPORT_PATH


def is_redis(broker_url: str) -> bool:
    return broker_url.startswith(("redis://", "rediss://", "redis+socket://", "sentinel://"))


def broker_transport(broker_url: str) -> str | None:
    """celery-fleet's reliable Redis transport where it applies (``redis://``, ``rediss://``).

    kombu picks the transport from the URL's scheme unless ``broker_transport`` names one;
    ``redis+socket://`` and ``sentinel://`` keep kombu's stock transport.
    """
    return TRANSPORT_PATH if broker_url.startswith(("redis://", "rediss://")) else None


def is_amqp(broker_url: str) -> bool:
    return broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))


#: Seconds a command may wait on the broker before it fails (and is retried or refused).
SOCKET_TIMEOUT_SECONDS = 15


def broker_transport_options(broker_url: str, timings: Timings) -> dict[str, Any]:
    if is_amqp(broker_url):
        return {
            # Publisher confirms: a publish returns only once RabbitMQ has the message (on a
            # quorum queue: on a majority of nodes, on disk), so a 202 means it is durable.
            "confirm_publish": True,
            # A hung broker fails a publish (and its confirm) instead of hanging the request.
            "read_timeout": SOCKET_TIMEOUT_SECONDS,
            "write_timeout": SOCKET_TIMEOUT_SECONDS,
        }
    if not is_redis(broker_url):
        return {}
    return {
        # Redis redelivers a message whose worker vanished only after this many seconds:
        # longer than the hard time limit (never redeliver a running task), short enough
        # that a SIGKILLed worker's task comes back soon.
        "visibility_timeout": timings.effective_visibility_timeout,
        # Sweep for abandoned messages every few seconds (kombu's default is every ~100 s),
        # so the redelivery delay after SIGKILL is the visibility timeout plus this.
        "unacked_restore_interval": RESTORE_SWEEP_SECONDS,
        "unacked_restore_throttle": 1,
        # The sweep runs under a lock in Redis.  kombu keeps it for 300 s, so a worker killed
        # (or cut off) while it sweeps stopped every sweep for five minutes: held messages of
        # dead workers waited that long (found by the fault suite).  A sweep takes
        # milliseconds, and two at once are safe (each restore is a WATCHed transaction).
        "unacked_mutex_expire": RESTORE_SWEEP_SECONDS,
        # Priorities 0-9 are folded into four Redis lists per queue (0, 3, 6, 9).
        "priority_steps": list(range(10)),
        "queue_order_strategy": "priority",
        # Fail fast and retry instead of hanging on a half-open TCP connection.
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": 5,
        "health_check_interval": 25,
    }


def amqp_settings(broker_url: str) -> dict[str, Any]:
    """What RabbitMQ needs on top: quorum queues (Celery >= 5.5) and fast dead-peer detection."""
    if not is_amqp(broker_url):
        return {}
    return {
        # Quorum queues: replicated (Raft), fsynced before a publish is confirmed, and they
        # count deliveries (x-delivery-count) so a policy's delivery-limit can dead-letter.
        "CELERY_TASK_DEFAULT_QUEUE_TYPE": "quorum",
        "CELERY_TASK_CREATE_MISSING_QUEUE_TYPE": "quorum",
        # Quorum queues have no global QoS: Celery then uses per-consumer prefetch.
        "CELERY_WORKER_DETECT_QUORUM_QUEUES": True,
        # Notice a dead or hung broker in ~20 s (two missed heartbeats), not 4 minutes.
        "CELERY_BROKER_HEARTBEAT": 10,
    }


def safe_delivery_settings(broker_url: str, timings: Timings) -> dict[str, Any]:
    """The ``CELERY_*`` settings for at-least-once delivery that survives worker loss."""
    timings = timings.validated()
    return {
        **amqp_settings(broker_url),
        "CELERY_BROKER_URL": broker_url,
        # Acknowledge after the task ran, not before: a worker that dies mid-task leaves
        # the message on the broker to be redelivered instead of losing it.
        "CELERY_TASK_ACKS_LATE": True,
        # ...and the same when the pool child is killed (OOM, SIGKILL): requeue, don't fail.
        "CELERY_TASK_REJECT_ON_WORKER_LOST": True,
        # A task that raises is acked (the error is recorded, not retried forever).
        "CELERY_TASK_ACKS_ON_FAILURE_OR_TIMEOUT": True,
        # Reserve one message per pool process: a stopping worker holds little, and a
        # long task cannot sit behind another one on a busy worker while others idle.
        "CELERY_WORKER_PREFETCH_MULTIPLIER": 1,
        # JSON only: pickle from the broker would run arbitrary code.
        "CELERY_TASK_SERIALIZER": "json",
        "CELERY_RESULT_SERIALIZER": "json",
        "CELERY_ACCEPT_CONTENT": ["json"],
        # Every task gets limits, so no task outlives the visibility timeout.
        "CELERY_TASK_SOFT_TIME_LIMIT": timings.soft_time_limit,
        "CELERY_TASK_TIME_LIMIT": timings.time_limit,
        # Redis: pop and record a message in one atomic step, so a lost reply cannot lose it,
        # and dead-letter what cannot be decoded (celery_fleet.transport).
        "CELERY_BROKER_TRANSPORT": broker_transport(broker_url),
        "CELERY_BROKER_TRANSPORT_OPTIONS": broker_transport_options(broker_url, timings),
        # Outlive a broker restart: keep retrying the connection instead of exiting.
        "CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP": True,
        "CELERY_BROKER_CONNECTION_MAX_RETRIES": None,
        # Cancel (and requeue) unacked tasks when the broker connection is lost, instead of
        # letting them run on and be redelivered to a second worker as well.
        "CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS": True,
        # Drain window of the soft shutdown; SIGTERM starts it (see celery_fleet.lifecycle).
        "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": float(timings.drain_window),
        # Task state lives in the application's database; no result backend round trips.
        "CELERY_TASK_IGNORE_RESULT": True,
        # One result-backend object per process instead of one built in every thread that
        # publishes (a dozen settings lookups each): under ASGI every request is a thread of its
        # own.  Celery's default (no backend) and its Redis and database backends are safe to
        # share; a project that adds the rpc:// backend sets this back to False.
        "CELERY_RESULT_BACKEND_THREAD_SAFE": True,
        # Report STARTED so the monitoring events and job pages can tell queued from running.
        "CELERY_TASK_TRACK_STARTED": True,
        # No task events: each is a broker publish of its own (three or more per task, half a
        # small task's throughput).  Workers count their tasks themselves and hand the totals
        # over in batches (celery_fleet.task_metrics, hooked by lifecycle.install); worker
        # heartbeats still flow.  Flower users turn both back on (docs/metrics.md).
        "CELERY_WORKER_SEND_TASK_EVENTS": False,
        "CELERY_TASK_SEND_SENT_EVENT": False,
        # Declare unknown queues on demand so a new queue group needs no broker setup.
        "CELERY_TASK_CREATE_MISSING_QUEUES": True,
        # Restart pool processes now and then so a leak in a task cannot grow forever.
        "CELERY_WORKER_MAX_TASKS_PER_CHILD": 1000,
    }
