"""What a queue holds on a Redis broker, read in O(queues) commands.

kombu's Redis transport keeps one queue in several places:

* **waiting** messages sit in Redis lists, one per priority step: ``<queue>`` for
  priority 0 and ``<queue>\\x06\\x16<n>`` for the others (``priority_steps``; Celery's
  default folds 0-9 into 0, 3, 6, 9, celery-fleet's preset keeps all ten).  Publishers
  ``LPUSH`` at the head, workers ``BRPOP`` from the tail, so the **tail** (``LINDEX -1``)
  is the oldest message of a list.  A message rejected with ``requeue`` goes back to the
  head with its old stamp, so both ends are read and the older one counts.
* **held** messages (prefetched or running on a worker, with late acks) leave the lists
  and live in the ``unacked`` hash: delivery tag -> JSON ``[message, exchange,
  routing_key]``, until the worker acks (or the visibility timeout restores them).

Cost: one ``EVALSHA`` of :data:`READ_SCRIPT` per read (in one pipeline with the scrape's
other scripts: :func:`run_scripts`), which runs ``LLEN`` plus two
``LINDEX`` per priority list inside Redis (O(queues x steps), independent of how many
messages wait) and ``HVALS`` of the ``unacked`` hash.  The hash holds at most *workers x
prefetch* entries while workers are alive (plus what dead workers left until the
visibility timeout restores it), so that part is O(held); above ``SCRIPT_HELD_LIMIT``
entries the script skips it and :func:`held_counts` reads at most ``held_limit`` entries
with ``HSCAN`` (``truncated`` set when cut short), so a pathological hash cannot make a
scrape slow or block Redis.  Where
scripting is refused, the same reads go in one pipeline plus ``HSCAN``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
#: Most held entries the script reads inside Redis (a few MB: Redis is busy for milliseconds);
#: above it they are read from Python with ``HSCAN``, which does not block Redis.
SCRIPT_HELD_LIMIT = 5_000
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


#: One round trip, run inside Redis.  KEYS[1] is kombu's ``unacked`` hash; ARGV: the stamp's
#: quoted key, held limit, key prefix, priority separator, number of steps, the steps, then the
#: queue names (the lists' names are built here: sending 20 queue names instead of 200 list
#: names keeps the command small; kombu's Redis transport does not run on Redis Cluster).
#: Per queue it returns the lists' lengths (comma-separated), the oldest publish stamp found
#: at either end of any list (a string: Lua numbers would lose the fraction) and 1 if an end
#: had no stamp.  The stamp is matched in the raw JSON (kombu base64-encodes bodies, so only
#: headers can hold the pattern), never decoded; no message leaves Redis.  Before those:
#: the number of held messages and, if it is at most the held limit, their count per
#: (exchange, routing key), read from the end of each ``[message, exchange, routing_key]``
#: entry (a negative limit: held messages not read).
READ_SCRIPT = """
local needle = ARGV[1]
local held_limit = tonumber(ARGV[2])
local prefix = ARGV[3]
local sep = ARGV[4]
local nsteps = tonumber(ARGV[5])
local steps = {}
for i = 1, nsteps do
  steps[i] = ARGV[5 + i]
end
local n_held = -1
local held = {}
if held_limit >= 0 then
  n_held = redis.call('HLEN', KEYS[1])
  if n_held <= held_limit then
    local counts = {}
    for _, entry in ipairs(redis.call('HVALS', KEYS[1])) do
      local ex, rk = string.match(entry, ',%s*"([^"]*)"%s*,%s*"([^"]*)"%s*%]%s*$')
      if ex then
        local k = ex .. '\\n' .. rk
        counts[k] = (counts[k] or 0) + 1
      end
    end
    for k, c in pairs(counts) do
      held[#held + 1] = k
      held[#held + 1] = c
    end
  end
end
local out = {n_held, held}
for q = 6 + nsteps, #ARGV do
  local lengths = {}
  local oldest = nil
  local unstamped = 0
  for _, step in ipairs(steps) do
    local key = prefix .. ARGV[q]
    if step ~= '0' then
      key = key .. sep .. step
    end
    local n = redis.pcall('LLEN', key)
    if type(n) ~= 'number' then
      n = 0  -- WRONGTYPE: not a kombu list, no messages
    end
    lengths[#lengths + 1] = n
    if n > 0 then
      for _, index in ipairs({-1, 0}) do
        local message = redis.call('LINDEX', key, index) or ''
        -- A plain find of the quoted header name, then the number after it: 7x faster than
        -- one pattern over the whole message (Lua's matcher tries every position).
        local _, last = string.find(message, needle, 1, true)
        local stamp = last and tonumber(string.match(message, '^%s*:%s*([%d%.eE%+%-]+)', last + 1) or '')
        if stamp and stamp > 0 then
          if oldest == nil or stamp < oldest then
            oldest = stamp
          end
        else
          unstamped = 1
        end
      end
    end
  end
  out[#out + 1] = table.concat(lengths, ',')
  out[#out + 1] = oldest and string.format('%.6f', oldest) or ''
  out[#out + 1] = unstamped
end
return out
"""
#: The stamp's JSON key, quoted (the script finds it, then reads the number after it).
STAMP_KEY = f'"{PUBLISHED_AT_HEADER}"'

PerQueue = list[tuple[list[int], float | None, bool]]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class ScriptCall:
    """One ``EVALSHA`` to run in a scrape's pipeline."""

    script: str
    keys: Sequence[str]
    args: Sequence[Any]

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.script.encode(), usedforsecurity=False).hexdigest()


def run_scripts(client: Any, calls: Sequence[ScriptCall]) -> list[Any]:
    """Every call in one pipeline (one round trip); each reply, or the exception it raised.

    redis-py's own script objects check ``SCRIPT EXISTS`` before each pipeline, a second round
    trip; here a ``NOSCRIPT`` reply (a restarted or flushed Redis) loads the scripts and retries.
    """
    for attempt in range(2):
        with client.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.evalsha(call.sha, len(call.keys), *call.keys, *call.args)
            replies: list[Any] = pipe.execute(raise_on_error=False)
        if attempt or not any(_no_script(r) for r in replies):
            return replies
        for call in calls:
            client.script_load(call.script)
    raise AssertionError("unreachable")


def _no_script(reply: Any) -> bool:
    from redis.exceptions import NoScriptError

    return isinstance(reply, NoScriptError)


def queue_script_call(
    queues: Sequence[str], steps: Sequence[int], key_prefix: str, held_limit: int
) -> ScriptCall:
    args = [STAMP_KEY, held_limit, key_prefix, PRIORITY_SEP, len(steps), *steps, *queues]
    return ScriptCall(READ_SCRIPT, [f"{key_prefix}{UNACKED_KEY}"], args)


def _parse_script_reply(reply: Any, held_limit: int) -> tuple[PerQueue, Counter[tuple[str, str]] | None]:
    """Per-queue reads and, unless there are more than ``held_limit``, held counts by (exchange, key)."""
    n_held, flat = int(reply[0]), reply[1]
    held: Counter[tuple[str, str]] | None = None
    if 0 <= n_held <= held_limit:
        held = Counter()
        for i in range(0, len(flat), 2):
            exchange, _, routing_key = _text(flat[i]).partition("\n")
            held[(exchange, routing_key)] += int(flat[i + 1])
    result: PerQueue = []
    for i in range(2, len(reply), 3):
        lengths, oldest, unstamped = reply[i : i + 3]
        stamp = float(oldest) if oldest not in (b"", "") else None
        result.append(([int(n) for n in _text(lengths).split(",")], stamp, bool(int(unstamped))))
    return result, held


def _per_key_pipeline(client: Any, keys: list[str]) -> list[tuple[int, float | None, bool]]:
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.llen(key)
            pipe.lindex(key, -1)
            pipe.lindex(key, 0)
        replies = pipe.execute(raise_on_error=False)
    result: list[tuple[int, float | None, bool]] = []
    for i in range(len(keys)):
        length, tail, head = replies[3 * i : 3 * i + 3]
        if isinstance(length, Exception) or not length:
            # WRONGTYPE: something that is not a kombu list took the name; it holds no messages.
            result.append((0, None, False))
            continue
        stamps = [
            published_at(end) for end in (tail, head) if end is not None and not isinstance(end, Exception)
        ]
        found = [stamp for stamp in stamps if stamp is not None]
        result.append((int(length), min(found) if found else None, len(found) < len(stamps)))
    return result


def _pipeline_per_queue(client: Any, keys: list[str], steps: int) -> PerQueue:
    per_key = _per_key_pipeline(client, keys)
    result: PerQueue = []
    for first in range(0, len(per_key), steps):
        chunk = per_key[first : first + steps]
        stamps = [stamp for _, stamp, _ in chunk if stamp is not None]
        result.append(
            ([n for n, _, _ in chunk], min(stamps) if stamps else None, any(u for _, _, u in chunk))
        )
    return result


def _stats(
    queues: Sequence[str], steps: Sequence[int], per_queue: PerQueue, now: float, held: HeldCounts
) -> dict[str, QueueStats]:
    result = {}
    for queue, (lengths, stamp, no_stamp) in zip(queues, per_queue, strict=True):
        by_priority = {step: n for step, n in zip(steps, lengths, strict=True) if n}
        result[queue] = QueueStats(
            waiting=sum(by_priority.values()),
            held=held.per_queue.get(queue, 0),
            oldest_age_seconds=None if stamp is None else max(0.0, now - stamp),
            waiting_by_priority=by_priority,
            unstamped_oldest=no_stamp,
        )
    return result


def _scripting_refused(exc: Exception) -> bool:
    """Scripting is disabled (ACL, some managed Redis): read with plain commands instead."""
    text = str(exc).lower()
    return "noperm" in text or "unknown command" in text or "scripting" in text


def read_queues(
    client: Any,
    queues: Sequence[str],
    *,
    now: float | None = None,
    priority_steps: Sequence[int] = ALL_PRIORITY_STEPS,
    key_prefix: str = "",
    held_limit: int = DEFAULT_HELD_LIMIT,
    use_script: bool = True,
    also: Sequence[ScriptCall] = (),
) -> tuple[dict[str, QueueStats], HeldCounts, list[Any]]:
    """Everything one scrape needs: per-queue stats (held included), the held totals, and the
    replies of ``also`` (other scripts run in the same round trip; an exception where one failed).

    One pipeline with one ``EVALSHA`` of :data:`READ_SCRIPT` in the usual case; one more round
    trip when a held message came through an exchange other than its queue's own (binding
    tables), and the ``HSCAN`` path of :func:`held_counts` when more than ``held_limit`` are held.
    Where scripting is not allowed: one pipeline of ``LLEN``/``LINDEX`` plus ``HSCAN`` (and the
    replies of ``also`` are the refusals).
    """
    queues = list(dict.fromkeys(queues))
    steps = list(priority_steps)
    per_queue: PerQueue | None = None
    pairs: Counter[tuple[str, str]] | None = None
    extra: list[Any] = []
    if use_script:
        in_script = min(held_limit, SCRIPT_HELD_LIMIT)
        reply, *extra = run_scripts(client, [queue_script_call(queues, steps, key_prefix, in_script), *also])
        if isinstance(reply, Exception):
            if not _scripting_refused(reply):
                raise reply
        else:
            per_queue, pairs = _parse_script_reply(reply, in_script)
    else:
        extra = [RuntimeError("scripting not used")] * len(also)
    if per_queue is None:
        keys = [priority_key(queue, step, key_prefix=key_prefix) for queue in queues for step in steps]
        per_queue = _pipeline_per_queue(client, keys, len(steps))
    if pairs is None:
        held = held_counts(client, queues, key_prefix=key_prefix, held_limit=held_limit)
    else:
        held = _assign_held(client, pairs, set(queues), key_prefix=key_prefix, truncated=False)
    # Held counts go in as each QueueStats is built (a dataclasses.replace per queue cost 20 us).
    return _stats(queues, steps, per_queue, time.time() if now is None else now, held), held, extra


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
    """Unacknowledged (prefetched or running) messages per queue, by ``HSCAN`` of kombu's ``unacked`` hash."""
    pairs: Counter[tuple[str, str]] = Counter()
    read = 0
    cursor = 0
    truncated = False
    while True:
        count = min(scan_count, max(1, held_limit - read))
        cursor, chunk = client.hscan(f"{key_prefix}{UNACKED_KEY}", cursor, count=count)
        for raw in chunk.values():
            pair = _exchange_and_routing_key(raw)
            if pair is not None:
                pairs[pair] += 1
                read += 1
        if not cursor:
            break
        if read >= held_limit:
            truncated = True
            break
    return _assign_held(client, pairs, set(queues), key_prefix=key_prefix, truncated=truncated)


def _assign_held(
    client: Any, pairs: Counter[tuple[str, str]], wanted: set[str], *, key_prefix: str, truncated: bool
) -> HeldCounts:
    # Binding tables only for exchanges that are not simply "the queue's own name".
    exchanges = sorted({ex for ex, rk in pairs if ex and not (ex == rk and rk in wanted)})
    tables: dict[str, list[tuple[str, ...]]] = {}
    if exchanges:
        with client.pipeline(transaction=False) as pipe:
            for exchange in exchanges:
                pipe.smembers(f"{key_prefix}{BINDING_KEY % exchange}")
            for exchange, members in zip(exchanges, pipe.execute(), strict=True):
                tables[exchange] = [tuple(_text(m).split(PRIORITY_SEP)) for m in members]
    per_queue = dict.fromkeys(wanted, 0)
    for (exchange, routing_key), count in pairs.items():
        queue = _queue_of_held(exchange, routing_key, wanted, tables)
        per_queue[queue] = per_queue.get(queue, 0) + count
    return HeldCounts(per_queue=per_queue, total=sum(pairs.values()), truncated=truncated)


def queue_stats(
    redis_client: Any,
    queues: Sequence[str],
    *,
    now: float | None = None,
    priority_steps: Sequence[int] = ALL_PRIORITY_STEPS,
    key_prefix: str = "",
    held_limit: int = DEFAULT_HELD_LIMIT,
    use_script: bool = True,
) -> dict[str, QueueStats]:
    """``{queue: QueueStats(waiting, held, oldest_age_seconds)}`` for each of ``queues``.

    A queue nobody declared yet (no list, no binding) reports zeros: scale from zero
    needs the number 0, not a missing series.  Raises ``redis.RedisError`` when the
    broker cannot be read; the caller decides what a failed read means.
    """
    if not queues:
        return {}
    stats, _, _ = read_queues(
        redis_client,
        queues,
        now=now,
        priority_steps=priority_steps,
        key_prefix=key_prefix,
        held_limit=held_limit,
        use_script=use_script,
    )
    return stats
