"""Job-finished notifications over Redis pub/sub, so a long-poll waits without a thread or a query loop.

Workers publish a job's id on one channel when the job reaches a final state or records a
follow-up callback (:func:`job_changed`, after the row is committed).  Each web process keeps one
subscription (:class:`JobEvents`) and wakes the long-polls waiting on that id, which then read
the row again.  The database stays the truth: a lost message (a Redis restart, a reconnect)
costs a long-poll at most ``JOBS_LONGPOLL_RECHECK`` seconds (5 by default), since waiters re-read
the row that often anyway, and every second while the subscription is down or not configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from uuid import UUID

import redis
import redis.asyncio
from django.conf import settings

logger = logging.getLogger(__name__)

CHANNEL = "celery-fleet:jobs:changed"
#: Seconds between re-reads of a waited-on job while notifications do not flow (none configured,
#: or the subscription is reconnecting).
RECHECK_BLIND = 1.0
#: Longest sleep of a waiter between looks at the shutdown flag.
TICK = 0.5
_RECONNECT_DELAY = 1.0

_publisher: redis.Redis | None = None


def _publisher_client(url: str) -> redis.Redis:
    global _publisher
    if _publisher is None:
        # Short timeouts: a slow Redis must not hold up the task that finished the job.
        _publisher = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    return _publisher


def job_changed(job_id: UUID | str) -> None:
    """Tell waiting long-polls that ``job_id`` changed; never raises (they re-read the row anyway)."""
    url = settings.JOBS_NOTIFY_REDIS_URL
    if not url:
        return
    try:
        _publisher_client(url).publish(CHANNEL, str(job_id))
    except redis.RedisError as exc:
        logger.warning(
            "could not announce job %s on Redis (long-polls will see it on re-read): %s", job_id, exc
        )


class Watch:
    """One waiter's view of one job: set when a notification for it arrives."""

    def __init__(self, events: JobEvents) -> None:
        self._events = events
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a change; ``True`` if one came (the flag is then reset)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        changed = self._changed.is_set()
        self._changed.clear()
        return changed

    @property
    def recheck_interval(self) -> float:
        return float(settings.JOBS_LONGPOLL_RECHECK) if self._events.live else RECHECK_BLIND


class JobEvents:
    """The subscription of one process (one event loop) and the watches it wakes."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._watches: dict[str, set[Watch]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    @property
    def live(self) -> bool:
        return bool(self._url) and self._subscribed.is_set()

    @contextlib.asynccontextmanager
    async def watching(self, job_id: str) -> AsyncIterator[Watch]:
        """A watch on ``job_id``, registered before the caller's first read (no change slips between)."""
        if self._url and self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen(), name="job-events")
        if self._url and not self._subscribed.is_set():
            # A moment for the first subscription, so the caller's first read is already covered.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), 1.0)
        watch = Watch(self)
        self._watches.setdefault(job_id, set()).add(watch)
        try:
            yield watch
        finally:
            waiting = self._watches.get(job_id)
            if waiting is not None:
                waiting.discard(watch)
                if not waiting:
                    del self._watches[job_id]

    async def _listen(self) -> None:
        while True:
            client = redis.asyncio.Redis.from_url(
                self._url, socket_connect_timeout=3, health_check_interval=30
            )
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self._subscribed.set()
                    # Changes missed while we were away: wake every waiter to re-read once.
                    self._wake_all()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._wake(message["data"].decode("ascii", "replace"))
            except (redis.RedisError, OSError) as exc:
                logger.warning(
                    "job notifications lost (%s); long-polls re-read every %gs", exc, RECHECK_BLIND
                )
            finally:
                self._subscribed.clear()
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(_RECONNECT_DELAY)

    def _wake(self, job_id: str) -> None:
        for watch in self._watches.get(job_id, ()):
            watch.notify()

    def _wake_all(self) -> None:
        for watches in self._watches.values():
            for watch in watches:
                watch.notify()


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, JobEvents] = weakref.WeakKeyDictionary()


def job_events() -> JobEvents:
    """This event loop's :class:`JobEvents` (one loop per uvicorn worker process)."""
    loop = asyncio.get_running_loop()
    events = _per_loop.get(loop)
    if events is None:
        events = _per_loop[loop] = JobEvents(settings.JOBS_NOTIFY_REDIS_URL)
    return events
