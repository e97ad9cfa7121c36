"""What a queue holds on a Redis broker, read in O(queues) commands.

kombu's Redis transport keeps one queue in several places:

* **waiting** messages sit in Redis lists, one per priority step: ``<queue>`` for
  priority 0 and ``<queue>\\x06\\16<n>`` for the others (``priority_steps``; Celery's
  default folds 0-9 into 0, 3, 6, 9, celery-fleet's preset keeps all ten).  Publishers
  ``LPUSH`` at the head, workers ``BRPOP`` from the tail, so the **tail** (``LINDEX -1``)
  is the oldest message of a list.  A message rejected with ``requeue`` goes back to the
  head with its old stamp, so both ends are read and the older one counts.
* **held** messages (prefetched or running on a worker, with late acks) leave the lists
  and live in the ``unacked`` hash: delivery tag -> JSON ``[message, exchange,
  routing_key]``, until the worker acks (or the visibility timeout restores them).

Cost: one pipeline of ``LLEN`` plus two ``LINDEX`` per priority list (O(queues x
steps), independent of how many messages wait), then ``HSCAN`` over the ``unacked``
hash.  The hash holds at most *workers x prefetch* entries while workers are alive
(plus what dead workers left until the visibility timeout restores it), so reading it
is O(held); it is capped at ``held_limit`` entries per call (``truncated`` is set when
the cap cut it short) so a pathological hash cannot make a scrape slow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from celery_fleet.headers import PUBLISHED_AT_HEADER

#: kombu's separator between a queue name and its priority step.
PRIORITY_SEP = "\x06\x16"
#: Every step a Redis priority list can have; a superset of kombu's default (0, 3, 6, 9).
ALL_PRIORITY_STEPS: tuple[int, ...] = tuple(range(10))
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
BINDING_KEY = "_kombu.binding.%s"
#: Most entries of the ``unacked`` hash one call reads (see the module docstring).
DEFAULT_HELD_LIMIT = 50_000
#: Held messages whose exchange/routing key match none of the asked-for queues.
OTHER_QUEUE = ""


@dataclass(frozen=True)
class QueueStats:
    """One queue on the broker.

    ``waiting``: messages in the queue's lists (all priorities); ``held``: messages
    delivered to a worker and not yet acknowledged (prefetched or running);
    ``oldest_age_seconds``: age of the oldest waiting message from its publish stamp,
    ``None`` when nothing waits or the oldest messages carry no stamp.
    """

    waiting: int
    held: int
    oldest_age_seconds: float | None
    waiting_by_priority: Mapping[int, int] = field(default_factory=dict)
    #: The oldest waiting message of some priority list has no publish stamp.
    unstamped_oldest: bool = False

    @property
    def backlog(self) -> int:
        """What a scaler should see: waiting plus held (does not drop to 0 while workers are busy)."""
        return self.waiting + self.held


@dataclass(frozen=True)
class HeldCounts:
    per_queue: dict[str, int]
    total: int
    truncated: bool


def priority_key(queue: str, step: int, *, key_prefix: str = "") -> str:
    return f"{key_prefix}{queue}" if step == 0 else f"{key_prefix}{queue}{PRIORITY_SEP}{step}"


def published_at(raw: bytes | str | None) -> float | None:
    """The publish stamp of a raw kombu message (JSON), or ``None`` if it has none or is not JSON."""
    if raw is None:
        return None
    try:
        message = json.loads(raw)
        value = message["headers"][PUBLISHED_AT_HEADER]
        stamp = float(value)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return stamp if stamp > 0 else None


def waiting_and_oldest(
    client: Any,
    queues: Sequence[str],
    *,
    now: float | None = None,
    priority_steps: Sequence[int] = ALL_PRIORITY_STEPS,
    key_prefix: str = "",
) -> dict[str, QueueStats]:
    """Waiting messages per queue and priority, and the oldest one's age: one pipeline round trip."""
    keys = [(queue, step) for queue in queues for step in priority_steps]
    with client.pipeline(transaction=False) as pipe:
        for queue, step in keys:
            key = priority_key(queue, step, key_prefix=key_prefix)
            pipe.llen(key)
            pipe.lindex(key, -1)
            pipe.lindex(key, 0)
        replies = pipe.execute(raise_on_error=False)
    now = time.time() if now is None else now
    by_priority: dict[str, dict[int, int]] = {queue: {} for queue in queues}
    oldest: dict[str, float | None] = dict.fromkeys(queues)
    unstamped: dict[str, bool] = dict.fromkeys(queues, False)
    for index, (queue, step) in enumerate(keys):
        length, tail, head = replies[3 * index : 3 * index + 3]
        if isinstance(length, Exception):
            # WRONGTYPE: something that is not a kombu list took the name; it holds no messages.
            continue
        by_priority[queue][step] = int(length)
        if not length:
            continue
        for end in (tail, head):
            if isinstance(end, Exception) or end is None:
                continue
            stamp = published_at(end)
            if stamp is None:
                unstamped[queue] = True
                continue
            age = max(0.0, now - stamp)
            current = oldest[queue]
            oldest[queue] = age if current is None else max(current, age)
    return {
        queue: QueueStats(
            waiting=sum(by_priority[queue].values()),
            held=0,
            oldest_age_seconds=oldest[queue],
            waiting_by_priority={step: n for step, n in by_priority[queue].items() if n},
            unstamped_oldest=unstamped[queue],
        )
        for queue in queues
    }


def _queue_of_held(
    exchange: str, routing_key: str, wanted: set[str], tables: Mapping[str, list[tuple[str, ...]]]
) -> str:
    """Which asked-for queue a held message came from (kombu's ``_lookup`` for direct exchanges)."""
    if routing_key in wanted and (not exchange or exchange == routing_key):
        return routing_key
    if not exchange:
        return routing_key if routing_key in wanted else OTHER_QUEUE
    for member in tables.get(exchange, []):
        if len(member) == 3:
            bound_key, _pattern, queue = member
            if queue in wanted and bound_key == routing_key:
                return queue
    return routing_key if routing_key in wanted else OTHER_QUEUE


def _exchange_and_routing_key(raw: bytes | str) -> tuple[str, str] | None:
    try:
        entry = json.loads(raw)
        exchange, routing_key = entry[1], entry[2]
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    return str(exchange or ""), str(routing_key or "")


def held_counts(
    client: Any,
    queues: Iterable[str],
    *,
    key_prefix: str = "",
    held_limit: int = DEFAULT_HELD_LIMIT,
    scan_count: int = 1000,
) -> HeldCounts:
    """Unacknowledged (prefetched or running) messages per queue from kombu's ``unacked`` hash."""
    wanted = set(queues)
    pairs: list[tuple[str, str]] = []
    cursor = 0
    truncated = False
    while True:
        cursor, chunk = client.hscan(f"{key_prefix}{UNACKED_KEY}", cursor, count=scan_count)
        for raw in chunk.values():
            pair = _exchange_and_routing_key(raw)
            if pair is not None:
                pairs.append(pair)
        if not cursor:
            break
        if len(pairs) >= held_limit:
            truncated = True
            break
    # Binding tables only for exchanges that are not simply "the queue's own name".
    exchanges = sorted({ex for ex, rk in pairs if ex and not (ex == rk and rk in wanted)})
    tables: dict[str, list[tuple[str, ...]]] = {}
    if exchanges:
        with client.pipeline(transaction=False) as pipe:
            for exchange in exchanges:
                pipe.smembers(f"{key_prefix}{BINDING_KEY % exchange}")
            for exchange, members in zip(exchanges, pipe.execute(), strict=True):
                tables[exchange] = [
                    tuple((m.decode() if isinstance(m, bytes) else str(m)).split(PRIORITY_SEP))
                    for m in members
                ]
    per_queue = dict.fromkeys(wanted, 0)
    for exchange, routing_key in pairs:
        queue = _queue_of_held(exchange, routing_key, wanted, tables)
        per_queue[queue] = per_queue.get(queue, 0) + 1
    return HeldCounts(per_queue=per_queue, total=len(pairs), truncated=truncated)


def queue_stats(
    redis_client: Any,
    queues: Sequence[str],
    *,
    now: float | None = None,
    priority_steps: Sequence[int] = ALL_PRIORITY_STEPS,
    key_prefix: str = "",
    held_limit: int = DEFAULT_HELD_LIMIT,
) -> dict[str, QueueStats]:
    """``{queue: QueueStats(waiting, held, oldest_age_seconds)}`` for each of ``queues``.

    A queue nobody declared yet (no list, no binding) reports zeros: scale from zero
    needs the number 0, not a missing series.  Raises ``redis.RedisError`` when the
    broker cannot be read; the caller decides what a failed read means.
    """
    queues = list(dict.fromkeys(queues))
    if not queues:
        return {}
    waiting = waiting_and_oldest(
        redis_client, queues, now=now, priority_steps=priority_steps, key_prefix=key_prefix
    )
    held = held_counts(redis_client, queues, key_prefix=key_prefix, held_limit=held_limit)
    return with_held(waiting, held)


def with_held(waiting: Mapping[str, QueueStats], held: HeldCounts) -> dict[str, QueueStats]:
    """Merge the results of :func:`waiting_and_oldest` and :func:`held_counts`."""
    return {queue: replace(stats, held=held.per_queue.get(queue, 0)) for queue, stats in waiting.items()}
