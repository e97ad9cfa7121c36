"""Follow-up tasks (``link``, ``link_error``) on a queue of their own that every worker reads first.

Celery publishes a job's ``link`` callback (and an ``link_error`` callback that takes only the
task id) when the job ends, to the callback task's usual queue: behind everything waiting
there, so a follow-up that should run at once (record the result, notify the user) waits for
the whole backlog, and it counts in the backlog the autoscaler reads.  celery-fleet routes
every follow-up that names no queue of its own to :func:`followup_queue` (``followups``;
``CELERY_FLEET_FOLLOWUP_QUEUE`` or the ``fleet_followup_queue`` setting, empty to turn this
off), and every worker of the app consumes that queue first, whatever its ``--queues`` say
(added at ``celeryd_after_setup``, Celery's hook for "queues always consumed"): with the
presets' ``queue_order_strategy: priority`` a worker that frees up takes a waiting follow-up
before its group's next job.  Worker groups, their scalers and their queue lengths stay as
they are: follow-ups are not anybody's backlog.

The routing is done where the job is published (``before_task_publish``): the follow-ups'
signatures travel inside the job's message, and the worker applies them as they are.
(An errback that takes ``(request, exc, traceback)`` is not published at all: Celery calls it
in the worker right after the failure.)
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import before_task_publish, celeryd_after_setup

ENV = "CELERY_FLEET_FOLLOWUP_QUEUE"
DEFAULT_QUEUE = "followups"
#: Options that already say where a signature goes.
_ROUTED = ("queue", "exchange", "routing_key")

_state: dict[str, str | None] = {}


def followup_queue(app: Celery | None = None) -> str | None:
    """The follow-up queue's name, or ``None`` when follow-ups are not routed."""
    configured = app.conf.get("fleet_followup_queue") if app is not None else None
    if configured is None:
        configured = os.environ.get(ENV, DEFAULT_QUEUE)
    return str(configured).strip() or None


def consume_first(queues: Any, name: str) -> None:
    """Make a worker's ``app.amqp.queues`` consume ``name`` (declared if missing) before the others."""
    queues.select_add(name)
    queues.select([name, *(q for q in queues.consume_from if q != name)])


def route(body: Any, queue: str) -> None:
    """Send the follow-ups embedded in a task message's ``body`` to ``queue``, unless routed already."""
    if not isinstance(body, tuple | list) or len(body) != 3 or not isinstance(body[2], dict):
        return  # not protocol 2: nothing embedded to route
    embed = body[2]
    for kind in ("callbacks", "errbacks"):
        for signature in embed.get(kind) or ():
            if not isinstance(signature, dict) or signature.get("subtask_type"):
                continue  # groups and chords keep their own routing
            options = signature.setdefault("options", {})
            if not any(options.get(key) for key in _ROUTED):
                options["queue"] = queue


def install(app: Celery) -> None:
    """Route this app's follow-ups (``lifecycle.install``); reads the setting at the first publish."""

    def on_publish(body: Any = None, **_: Any) -> None:
        if "queue" not in _state:
            _state["queue"] = followup_queue(app)
        queue = _state["queue"]
        if queue is not None:
            route(body, queue)

    before_task_publish.connect(on_publish, weak=False)

    def on_worker_setup(instance: Any = None, **_: Any) -> None:
        queue = followup_queue(app)
        if queue is not None and instance is not None and instance.app is app:
            consume_first(instance.app.amqp.queues, queue)

    celeryd_after_setup.connect(on_worker_setup, weak=False)
