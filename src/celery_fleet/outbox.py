"""The outbox: a job row is the source of truth, and a sweeper publishes again what the
broker lost.

A broker can drop a message it accepted: Redis with ``appendfsync everysec`` loses up to
the last second of writes when it crashes (SIGKILL, OOM kill, node loss), and a producer
can die between committing a job and publishing it.  The job row outlives both; what is
missing is a way to tell "still waiting or running" from "gone".  On Redis that question
has an exact, cheap answer at one instant (one ``MULTI``): a message is *queued* (its
queue's lists are not empty -- then it may be among them), *held* (its task id is in
``unacked``) or *dead-lettered* (in ``celery-fleet:dead-letter``), or it is nowhere.  A job
that has shown no sign of life for :func:`republish_after` seconds and is nowhere is
published again; its task is idempotent by job id, so a second copy is harmless.

RabbitMQ cannot be looked into, and needs no looking: with quorum queues and publisher
confirms a confirmed message is not lost, so only jobs whose publish was never confirmed
are published again.

This module is the generic part (what the broker holds, which jobs are lost, the
timings); the project owns its job table and calls it from a periodic task.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery_fleet.timings import RESTORE_SWEEP_SECONDS, Timings
from celery_fleet.transport import DEAD_LETTER_KEY

#: kombu's separator between a queue name and its priority step.
PRIORITY_SEP = "\x06\x16"
UNACKED_KEY = "unacked"


def republish_after(timings: Timings) -> int:
    """Seconds a job may show no sign of life (publish, start) before the sweeper looks at it.

    The sweeper republishes only what the broker does not hold, so the bound does not keep a
    waiting job from running twice; it covers what the broker cannot see: a publish still in
    a producer's hands (retrying a broker that is slow or restarting).  The grace period --
    as long as a worker may take to stop -- is used: short timings, short bound.
    """
    return timings.effective_grace_period


def sweep_interval(timings: Timings) -> int:
    """Seconds between sweeps: at most a few per bound, at least every restore sweep."""
    return max(RESTORE_SWEEP_SECONDS, republish_after(timings) // 2)


@dataclass(frozen=True)
class Pending:
    """A job not finished yet, as the sweeper sees it."""

    task_id: str
    queue: str
    #: Unix time of the last sign of life: the last publish (or the row's creation), the start.
    since: float
    #: The broker confirmed a publish of it.
    published: bool


@dataclass(frozen=True)
class BrokerView:
    """What a Redis broker held at one instant: how many wait per queue, which ids are held
    or dead-lettered."""

    waiting: Mapping[str, int]
    held_ids: frozenset[str] = field(default_factory=frozenset)
    dead_ids: frozenset[str] = field(default_factory=frozenset)

    def where(self, job: Pending) -> str | None:
        """Where the job's message may be, or None if it is nowhere."""
        if job.task_id in self.held_ids:
            return "held by a worker"
        if job.task_id in self.dead_ids:
            return "in the dead-letter list"
        if self.waiting.get(job.queue, 0):
            return "perhaps waiting in its queue"
        return None


def lost(jobs: Iterable[Pending], view: BrokerView | None, *, now: float, bound: float) -> list[Pending]:
    """The jobs to publish again.

    ``view`` None means the broker cannot be looked into (RabbitMQ): then only jobs whose
    publish was never confirmed count as lost.
    """
    quiet = [job for job in jobs if now - job.since >= bound]
    if view is None:
        return [job for job in quiet if not job.published]
    return [job for job in quiet if view.where(job) is None]


def _ids_of(records: Iterable[bytes], *, dead_letters: bool) -> frozenset[str]:
    ids: set[str] = set()
    for record in records:
        try:
            # A dead letter is "<metadata>\n<message>"; a held record is [message, exchange, key].
            message = json.loads(record.partition(b"\n")[2]) if dead_letters else json.loads(record)[0]
            task_id = message["headers"]["id"]
        except (ValueError, KeyError, TypeError, IndexError):
            continue
        if isinstance(task_id, str):
            ids.add(task_id)
    return frozenset(ids)


def redis_view(
    client: Any, queues: Sequence[str], *, priority_steps: Iterable[int] = range(10)
) -> BrokerView:
    """One atomic look (``MULTI``) at the queues' lists, ``unacked`` and the dead-letter list."""
    steps = list(priority_steps)
    with client.pipeline(transaction=True) as pipe:
        for queue in queues:
            for step in steps:
                pipe.llen(queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}")
        pipe.hvals(UNACKED_KEY)
        pipe.lrange(DEAD_LETTER_KEY, 0, -1)
        replies = pipe.execute()
    held, dead = replies[-2], replies[-1]
    waiting = {queue: sum(replies[i * len(steps) : (i + 1) * len(steps)]) for i, queue in enumerate(queues)}
    return BrokerView(
        waiting=waiting,
        held_ids=_ids_of(held, dead_letters=False),
        dead_ids=_ids_of(dead, dead_letters=True),
    )


def task_queue(app: Any, task_name: str) -> str:
    """The queue Celery routes ``task_name`` to (task routes, else the default queue)."""
    route = app.amqp.router.route({}, task_name, (), {})
    queue = route.get("queue")
    return str(getattr(queue, "name", queue) or app.conf.task_default_queue)


def view_of_broker(app: Any, queues: Sequence[str]) -> BrokerView | None:
    """The broker's view for the app's broker: Redis is looked into, RabbitMQ is not (None)."""
    url = str(app.conf.broker_url or "")
    if not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    options = app.conf.broker_transport_options or {}
    client = redis.Redis.from_url(
        url,
        socket_timeout=options.get("socket_timeout", 15),
        socket_connect_timeout=options.get("socket_connect_timeout", 5),
    )
    try:
        return redis_view(client, queues, priority_steps=options.get("priority_steps") or range(10))
    finally:
        client.close()
