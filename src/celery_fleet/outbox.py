"""The outbox: a job row is the source of truth, and a sweeper publishes again what the
broker lost.

A broker can drop a message it accepted: Redis with ``appendfsync everysec`` loses up to
the last second of writes when it crashes (SIGKILL, OOM kill, node loss), and a producer
can die between committing a job and publishing it.  The job row outlives both; what is
missing is a way to tell "still waiting or running" from "gone".  On Redis that question
has an exact answer at one instant (one read-only script): a message is *waiting* in one
of its queue's lists, *held* in ``unacked`` or *dead-lettered* in ``celery-fleet:dead-letter``,
or it is nowhere.  (Above :data:`LOOK_LIMIT` messages the look is skipped and nothing is
republished until the backlog shrinks.)  A job
that has shown no sign of life for :func:`republish_after` seconds and is nowhere is
published again; its task is idempotent by job id, so a second copy is harmless.

RabbitMQ cannot be looked into, and needs no looking: with quorum queues and publisher
confirms a confirmed message is not lost, so only jobs whose publish was never confirmed
are published again.

This module is the generic part (what the broker holds, which jobs are lost, the
timings); the project owns its job table and calls it from a periodic task.
"""

from __future__ import annotations

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
    #: A confirmed publish of it was recorded (what counts on a broker that is not looked into).
    published: bool


#: Most messages (waiting, held, dead-lettered) one look reads inside Redis: a few MB, a few
#: milliseconds of Redis time, and only when some job is overdue.
LOOK_LIMIT = 20_000

#: One atomic look: how many messages wait per queue, and the task ids of every message that is
#: waiting, held or dead-lettered (unless there are more than the limit).  KEYS: unacked,
#: dead-letter list, then per queue its priority lists.  ARGV: limit, lists per queue.
LOOK_SCRIPT = """#!lua flags=no-writes
local limit, steps = tonumber(ARGV[1]), tonumber(ARGV[2])
local nqueues = (#KEYS - 2) / steps
local waiting = {}
local total = redis.call('HLEN', KEYS[1]) + redis.call('LLEN', KEYS[2])
for q = 1, nqueues do
  local n = 0
  for p = 1, steps do n = n + redis.call('LLEN', KEYS[2 + (q - 1) * steps + p]) end
  waiting[q] = n
  total = total + n
end
if total > limit then return {waiting, 0, {}} end
local ids = {}
local function add(message)
  local id = string.match(message, '"id": ?"([^"]+)"')
  if id then ids[#ids + 1] = id end
end
for _, m in ipairs(redis.call('HVALS', KEYS[1])) do add(m) end
for i = 2, #KEYS do
  for _, m in ipairs(redis.call('LRANGE', KEYS[i], 0, -1)) do add(m) end
end
return {waiting, 1, ids}
"""


@dataclass(frozen=True)
class BrokerView:
    """What a Redis broker held at one instant: how many messages wait per queue and, when it
    could look through them all, the task id of every message waiting, held or dead-lettered."""

    waiting: Mapping[str, int]
    seen_ids: frozenset[str] = field(default_factory=frozenset)
    #: False when there were more messages than :data:`LOOK_LIMIT`: ``seen_ids`` is then empty.
    complete: bool = True

    def where(self, job: Pending) -> str | None:
        """Where the job's message may be, or None if it is nowhere."""
        if job.task_id in self.seen_ids:
            return "on the broker (waiting, held or dead-lettered)"
        if not self.complete:
            return "unknown: too many messages to look through"
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


def redis_view(
    client: Any, queues: Sequence[str], *, priority_steps: Iterable[int] = range(10), limit: int = LOOK_LIMIT
) -> BrokerView:
    """One atomic look (:data:`LOOK_SCRIPT`) at the queues' lists, ``unacked`` and the dead letters."""
    steps = list(priority_steps)
    keys = [UNACKED_KEY, DEAD_LETTER_KEY] + [
        queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for queue in queues for step in steps
    ]
    waiting, complete, ids = client.eval(LOOK_SCRIPT, len(keys), *keys, limit, len(steps))
    return BrokerView(
        waiting=dict(zip(queues, (int(n) for n in waiting), strict=True)),
        seen_ids=frozenset(i.decode() if isinstance(i, bytes) else str(i) for i in ids),
        complete=bool(complete),
    )


def task_queue(app: Any, task_name: str) -> str:
    """The queue Celery routes ``task_name`` to (task routes, else the default queue)."""
    route = app.amqp.router.route({}, task_name, (), {})
    queue = route.get("queue")
    return str(getattr(queue, "name", queue) or app.conf.task_default_queue)


def looks_into_broker(app: Any) -> bool:
    """Whether the sweeper tells a lost job by looking into the broker (Redis), not by the
    publisher's confirm (RabbitMQ).

    Only where it does not must a producer record each confirmed publish: that record is then
    the sweeper's only evidence.  On Redis the record would cost every enqueue a database write
    that nothing reads.
    """
    return str(app.conf.broker_url or "").startswith(("redis://", "rediss://"))


def view_of_broker(app: Any, queues: Sequence[str]) -> BrokerView | None:
    """The broker's view for the app's broker: Redis is looked into, RabbitMQ is not (None)."""
    if not looks_into_broker(app):
        return None
    url = str(app.conf.broker_url)
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
