"""One round trip per enqueue on Redis: routing, the message and its ``sent`` count in one script.

kombu's Redis transport publishes a task in two round trips and builds a new ``redis.Redis``
client object for each command: ``SMEMBERS _kombu.binding.<exchange>`` to find the queues the
routing key is bound to (``Channel._lookup``), then ``LPUSH`` into each (``Channel._put``, under
``conn_or_acquire()``).  :func:`install` replaces ``basic_publish`` of kombu's Redis channel
(the producer side only; consuming is untouched) for the common case, a direct exchange or the
default one: one ``EVALSHA`` of :data:`PUBLISH_SCRIPT` reads the binding table, pushes the
message onto the right priority list of every bound queue and, for a Celery task, adds one to
its ``sent`` total (``celery_fleet.task_metrics``), on one client kept per channel.

Everything else goes kombu's own way, unchanged: fanout and topic exchanges, queues declared
with ``x-expires``, kombu's publish batches, ``global_keyprefix``, and a routing key nothing is
bound to (kombu's dead-letter handling and its warning); their ``sent`` count is added in a
second command.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

from celery_fleet import task_metrics

logger = logging.getLogger("celery_fleet.publish")

#: KEYS[1]: the exchange's binding table (unused for the default exchange).  ARGV: routing
#: key, payload, priority step, kombu's separator, 1 for the default exchange (the routing key
#: is the queue), then the ``sent`` hash ('' to count nothing), the field prefix, the sources
#: set, the source, now and the hash's TTL, then the bell key prefix of
#: :mod:`celery_fleet.transport` ('' when the channel rings no bells) and the bell's cap.  Returns
#: how many queues got the message (0: nothing bound; nothing was written, kombu's own path decides).
PUBLISH_SCRIPT = """
local routing_key, payload, step, sep = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local queues = {}
if ARGV[5] == '1' then
  queues[1] = routing_key
else
  local seen = {}
  for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    local first = string.find(member, sep, 1, true)
    if first and string.sub(member, 1, first - 1) == routing_key then
      local second = string.find(member, sep, first + #sep, true)
      local queue = second and string.sub(member, second + #sep) or ''
      if queue ~= '' and not seen[queue] then
        seen[queue] = true
        queues[#queues + 1] = queue
      end
    end
  end
end
local sent = ARGV[6]
for _, queue in ipairs(queues) do
  local list = queue
  if step ~= '0' then
    list = queue .. sep .. step
  end
  redis.call('LPUSH', list, payload)
  if ARGV[13] ~= '' then
    -- Wake an idle consumer of the reliable transport, in the same step as the message.
    redis.call('LPUSH', ARGV[13] .. queue, 1)
    redis.call('LTRIM', ARGV[13] .. queue, 0, tonumber(ARGV[14]) - 1)
  end
  if sent ~= '' then
    redis.call('HINCRBY', sent, ARGV[7] .. queue .. ARGV[8], 1)
  end
end
if sent ~= '' and #queues > 0 then
  redis.call('EXPIRE', sent, ARGV[12])
  redis.call('ZADD', ARGV[9], ARGV[11], ARGV[10])
end
return #queues
"""
PUBLISH_SHA = hashlib.sha1(PUBLISH_SCRIPT.encode(), usedforsecurity=False).hexdigest()

_kombu_basic_publish = kombu_redis.Channel.basic_publish
_installed = False


def _client(channel: Any) -> Any:
    """One client per channel over the channel's pool (kombu builds one per command)."""
    client = getattr(channel, "_fleet_publish_client", None)
    if client is None:
        client = channel._fleet_publish_client = channel._create_client()
    return client


def _one_round_trip(channel: Any, exchange: str, kwargs: dict[str, Any]) -> bool:
    if kwargs.get("_publish_batch") is not None or channel._expires or channel.global_keyprefix:
        return False
    return not exchange or channel.typeof(exchange).type == "direct"


def _script_args(channel: Any, message: dict[str, Any], exchange: str, routing_key: str) -> list[Any]:
    step = channel.priority(channel._get_message_priority(message, reverse=False))
    args: list[Any] = [routing_key, dumps(message), step, channel.sep, "0" if exchange else "1"]
    counting = task_metrics.sent_on_broker(message)
    sent = ["", "", "", "", "", "", ""] if counting is None else counting.script_args()
    # The reliable transport's channel rings a bell per publish (celery_fleet.transport.Channel).
    bells = [getattr(channel, "bell_prefix", ""), getattr(channel, "bell_cap", 0)]
    return [*args, *sent, *bells]


def basic_publish(self: Any, message: dict[str, Any], exchange: str, routing_key: str, **kwargs: Any) -> Any:
    if not _one_round_trip(self, exchange, kwargs):
        result = _kombu_basic_publish(self, message, exchange, routing_key, **kwargs)
        _count_separately(self, message, exchange, routing_key)
        return result
    self._inplace_augment_message(message, exchange, routing_key)
    keys = [self.keyprefix_queue % exchange]
    args = _script_args(self, message, exchange, routing_key)
    client = _client(self)
    try:
        delivered = client.evalsha(PUBLISH_SHA, 1, *keys, *args)
    except Exception as exc:
        if "NOSCRIPT" not in str(exc) and type(exc).__name__ != "NoScriptError":
            raise
        delivered = client.eval(PUBLISH_SCRIPT, 1, *keys, *args)  # loads it for the next time
    if int(delivered):
        return None
    # Nothing bound to this routing key: kombu's own routing decides (dead letter, warning).
    if exchange:
        return self.typeof(exchange).deliver(message, exchange, routing_key, **kwargs)
    return self._put(routing_key, message, **kwargs)


def _count_separately(channel: Any, message: dict[str, Any], exchange: str, routing_key: str) -> None:
    """``sent`` for a task that went kombu's own way (its queue: the routing key)."""
    counting = task_metrics.sent_on_broker(message)
    if counting is None or (exchange and channel.typeof(exchange).type == "fanout"):
        return
    try:
        counting.write(_client(channel), routing_key)
    except Exception as exc:  # counting must never fail a publish that went through
        logger.warning("could not count a sent task: %s", exc)


def install() -> None:
    """Patch kombu's Redis channel once per process (idempotent)."""
    global _installed
    if _installed:
        return
    kombu_redis.Channel.basic_publish = basic_publish  # type: ignore[method-assign]
    _installed = True
