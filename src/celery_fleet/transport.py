"""Reliable fetch on Redis: a message is always in its queue, held in ``unacked``, in the
dead-letter list, or acknowledged -- never nowhere.

kombu's Redis transport consumes with ``BRPOP`` and records the message in ``unacked``
only after the reply has reached the worker: a reply lost with its connection (a broker
restart, a cut TCP connection, a worker killed mid-read) loses the message (kombu #305,
#593).  This transport keeps kombu's channel -- its queues, priorities, bindings, acks,
visibility-timeout restore and event-loop integration -- and changes how a message leaves
its list:

* **Pop and record in one step.**  :data:`POP_SCRIPT` runs inside Redis: it pops the first
  message of the consumer's priority lists (kombu's order: priority first, then queue) and
  writes it to ``unacked``/``unacked_index`` in the same atomic script, under a delivery
  tag unique to this delivery.  If the reply never arrives, the message is held in
  ``unacked`` and kombu's visibility-timeout sweep puts it back.  A unique tag per delivery
  also keeps a late ack from a worker that was frozen past the visibility timeout from
  erasing the record of the message's next delivery.
* **Block without popping.**  A script cannot block, so publishers ring a *bell*: every
  publish pushes a token onto ``celery-fleet:bell:<queue>`` in the same transaction as the
  message.  An idle consumer waits in ``BRPOP`` on the bells of its queues (losing a bell is
  harmless: it is only a wake-up), then runs the pop script.  The wait has kombu's own
  ``brpop_timeout`` (1 s), after which the consumer pops anyway, so a message pushed by a
  publisher that rings no bell (kombu's stock transport, a hand ``LPUSH``) waits at most
  that long.  The pop script trims each bell list to the number of waiting messages.
* **Nothing crashes a consumer.**  A payload that is not a kombu message (not JSON, not an
  object, no delivery tag) is moved by the pop script itself into the dead-letter list
  ``celery-fleet:dead-letter``; one that Python cannot decode, or that raises while the
  consumer hands it to Celery, is moved there from ``unacked`` in one atomic step; a message
  the consumer rejects without requeue (an unknown task, an invalid message) goes there as
  well (RabbitMQ's dead-lettering semantics).  A message redelivered ``delivery_limit``
  times (header ``x-delivery-count``, RabbitMQ's name, counted on every restore) without an
  ack is dead-lettered instead of being delivered again, so a task that kills its process
  cannot crash-loop a queue.  ``celery-fleet dead-letter`` lists and requeues the entries.

Each dead-letter entry is one line of JSON metadata (queue, reason, unix time), a newline,
then the message exactly as it was on the queue.

Needs Redis >= 7.0 (script flags).  Not supported: kombu's ``global_keyprefix`` and Redis
Sentinel (``sentinel://`` URLs keep kombu's stock transport).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

logger = logging.getLogger("celery_fleet.transport")

# kombu's type stubs do not cover the Redis transport internals this module builds on.
_RedisChannel: Any = kombu_redis.Channel
_RedisQoS: Any = kombu_redis.QoS
_RedisTransport: Any = kombu_redis.Transport
_VirtualQoS: Any = virtual.QoS

#: Celery's ``broker_transport`` setting that selects this transport (the presets set it).
TRANSPORT_PATH = "celery_fleet.transport:Transport"
DEAD_LETTER_KEY = "celery-fleet:dead-letter"
BELL_PREFIX = "celery-fleet:bell:"
#: RabbitMQ's header name for the same count (quorum queues).
DELIVERY_COUNT_HEADER = "x-delivery-count"
#: RabbitMQ 4's default ``delivery-limit`` for quorum queues: well above what faults explain.
DEFAULT_DELIVERY_LIMIT = 20
#: Most wake-up tokens kept per queue: more than the idle consumers a burst can wake.
BELL_CAP = 1000
#: Most garbage payloads one pop moves to the dead-letter list before it returns.
MAX_BURIED_PER_POP = 100
#: Separates a delivery tag from its per-delivery suffix.
TAG_SEPARATOR = "#"

#: Pops the first message of the consumer's lists and records it as held, in one step.
#: KEYS: unacked hash, unacked_index zset, dead-letter list, then per queue: its bell list and
#: its priority lists.  ARGV: now (the client's clock, which kombu's restore sweep compares
#: with), delivery limit, a nonce for this delivery's tag, priority lists per queue, number of
#: queues, then the queue names.  Returns {queue number, raw message, delivery tag} or nil.
POP_SCRIPT = f"""#!lua flags=allow-oom
local now, limit, nonce = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local steps, nqueues = tonumber(ARGV[4]), tonumber(ARGV[5])
local function base(q) return 3 + (q - 1) * (steps + 1) end
local function bury(q, raw, reason)
  local meta = cjson.encode({{queue = ARGV[5 + q], reason = reason, at = tonumber(now)}})
  redis.call('LPUSH', KEYS[3], meta .. '\\n' .. raw)
end
local result, buried = nil, 0
for p = 1, steps do
  for q = 1, nqueues do
    while result == nil and buried < {MAX_BURIED_PER_POP} do
      local raw = redis.call('RPOP', KEYS[base(q) + 1 + p])
      if not raw then break end
      local ok, msg = pcall(cjson.decode, raw)
      local props = ok and type(msg) == 'table' and msg.properties
      local tag = type(props) == 'table' and props.delivery_tag
      if type(tag) ~= 'string' then
        bury(q, raw, ok and 'not a kombu message (no properties.delivery_tag)' or 'not JSON')
        buried = buried + 1
      else
        local headers = type(msg.headers) == 'table' and msg.headers or {{}}
        local count = tonumber(headers['{DELIVERY_COUNT_HEADER}']) or 0
        if count >= limit then
          bury(q, raw, 'delivered ' .. count .. ' times without an ack (delivery limit ' .. limit .. ')')
          buried = buried + 1
        else
          local info = type(props.delivery_info) == 'table' and props.delivery_info or {{}}
          local ex = type(info.exchange) == 'string' and info.exchange or ''
          local rk = type(info.routing_key) == 'string' and info.routing_key or ''
          local dtag = tag .. '{TAG_SEPARATOR}' .. nonce
          local record = '[' .. raw .. ',' .. cjson.encode(ex) .. ',' .. cjson.encode(rk) .. ']'
          redis.call('HSET', KEYS[1], dtag, record)
          redis.call('ZADD', KEYS[2], now, dtag)
          result = {{q, raw, dtag}}
        end
      end
    end
  end
end
for q = 1, nqueues do
  local waiting = 0
  for p = 1, steps do waiting = waiting + redis.call('LLEN', KEYS[base(q) + 1 + p]) end
  local bell = KEYS[base(q) + 1]
  if redis.call('LLEN', bell) > waiting then
    if waiting == 0 then redis.call('DEL', bell) else redis.call('LTRIM', bell, 0, waiting - 1) end
  end
end
return result
"""

#: Moves a held message to the dead-letter list if it is still held (not acked, not restored).
#: KEYS: unacked hash, unacked_index zset, dead-letter list.  ARGV: delivery tag, entry.
BURY_SCRIPT = """#!lua flags=allow-oom
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('LPUSH', KEYS[3], ARGV[2])
  return 1
end
return 0
"""


def bell_key(queue: str) -> str:
    return f"{BELL_PREFIX}{queue}"


def original_tag(delivery_tag: str) -> str:
    """The tag the publisher gave the message, without this delivery's suffix."""
    return delivery_tag.rsplit(TAG_SEPARATOR, 1)[0]


def dead_letter_entry(queue: str, reason: str, raw: bytes | str, now: float | None = None) -> bytes:
    meta = json.dumps({"queue": queue, "reason": reason, "at": time.time() if now is None else now})
    body = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    return meta.encode("utf-8") + b"\n" + body


class QoS(_RedisQoS):
    """kombu's ack emulation, with the unacked record written by the pop script."""

    channel: Channel

    def append(self, message: Any, delivery_tag: str) -> None:
        # Recorded in `unacked` by POP_SCRIPT, atomically with the pop: only the in-memory
        # bookkeeping (prefetch accounting, restore at shutdown) is left to do.
        _VirtualQoS.append(self, message, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        queue = self.channel.popped_from.pop(delivery_tag, "")
        if requeue:
            self.restore_by_tag(delivery_tag, leftmost=True)
        else:
            message = self._delivered.get(delivery_tag)
            payload = dict(message._raw) if message is not None else None
            self.channel.bury(
                delivery_tag,
                payload,
                queue=queue or _routing_key(payload),
                reason="rejected by the consumer without requeue (unknown task or invalid message: "
                "see the worker log)",
            )
        _VirtualQoS.ack(self, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        super().ack(delivery_tag)
        self.channel.popped_from.pop(delivery_tag, None)

    def forget(self, delivery_tag: str) -> None:
        """Drop a delivery from the in-memory bookkeeping only (it was moved elsewhere)."""
        self.channel.popped_from.pop(delivery_tag, None)
        if delivery_tag in self._delivered:
            _VirtualQoS.ack(self, delivery_tag)


def _routing_key(payload: Any) -> str:
    try:
        return str(payload["properties"]["delivery_info"]["routing_key"])
    except (KeyError, TypeError):
        return ""


class Channel(_RedisChannel):
    """kombu's Redis channel with an atomic pop, bells and a dead-letter list."""

    QoS = QoS
    #: Publishers ring ``bell_prefix + queue`` (celery_fleet.publish reads these two).
    bell_prefix = BELL_PREFIX
    bell_cap = BELL_CAP
    dead_letter_key = DEAD_LETTER_KEY
    delivery_limit = DEFAULT_DELIVERY_LIMIT
    from_transport_options = (*_RedisChannel.from_transport_options, "dead_letter_key", "delivery_limit")

    #: Which reply the poll connection owes: "pop" (POP_SCRIPT) or "bell" (BRPOP on bells).
    _awaiting: str | None = None
    _pop_queues: Sequence[str] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: The queue each delivery not yet acked was popped from (a dead letter goes back there).
        self.popped_from: dict[str, str] = {}
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            raise ValueError(
                "celery_fleet's reliable Redis transport does not support global_keyprefix; "
                "use a Redis database of its own instead (redis://host:6379/N)"
            )
        if not self.ack_emulation:
            raise ValueError("celery_fleet's reliable Redis transport needs ack_emulation (the default)")
        self._pop_sha, self._bury_sha = self._load_scripts(self.client)

    def _load_scripts(self, client: Any) -> tuple[str, str]:
        try:
            return client.script_load(POP_SCRIPT), client.script_load(BURY_SCRIPT)
        except self.ResponseError as exc:
            raise RuntimeError(
                "celery_fleet's reliable Redis transport needs Redis >= 7.0 (scripts with flags); "
                f"the server refused its script: {exc}"
            ) from exc

    def _script(self, client: Any, which: str, numkeys: int, *keys_and_args: Any) -> Any:
        """EVALSHA one of the scripts, loading them again if the server forgot them (restart)."""
        try:
            return client.evalsha(getattr(self, which), numkeys, *keys_and_args)
        except self.ResponseError as exc:
            if "NOSCRIPT" not in str(exc):
                raise
            self._pop_sha, self._bury_sha = self._load_scripts(client)
            return client.evalsha(getattr(self, which), numkeys, *keys_and_args)

    # --- consuming -------------------------------------------------------------------
    def _pop_command(self, queues: Sequence[str]) -> list[Any]:
        keys: list[str] = [self.unacked_key, self.unacked_index_key, self.dead_letter_key]
        for queue in queues:
            keys.append(bell_key(queue))
            keys.extend(self._q_for_pri(queue, pri) for pri in self.priority_steps)
        args: list[Any] = [
            repr(time.time()),
            self.delivery_limit,
            uuid.uuid4().hex[:16],
            len(self.priority_steps),
            len(queues),
            *queues,
        ]
        return ["EVALSHA", self._pop_sha, len(keys), *keys, *args]

    def _send(self, awaiting: str, command: list[Any]) -> None:
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self._awaiting = awaiting
        self.client.connection.send_command(*command)

    def _send_pop(self, queues: Sequence[str]) -> None:
        self._pop_queues = queues
        self._send("pop", self._pop_command(queues))

    def _brpop_start(self, timeout: Any = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if queues:
            self._send_pop(queues)

    def _wait_for_bell(self) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if queues:
            self._send("bell", ["BRPOP", *(bell_key(q) for q in queues), self.brpop_timeout or 1])

    def _brpop_read(self, **options: Any) -> bool:
        awaiting, self._awaiting = self._awaiting, None
        connection = self.client.connection
        try:
            command = "EVALSHA" if awaiting == "pop" else "BRPOP"
            reply = self.client.parse_response(connection, command, **options)
        except self.connection_errors:
            self._in_poll = None
            connection.disconnect()
            raise
        except self.ResponseError as exc:
            self._in_poll = None
            self._flush_brpop_reauth()
            if "NOSCRIPT" in str(exc):  # the server restarted and forgot the scripts
                self._pop_sha, self._bury_sha = self._load_scripts(self.client)
                self._brpop_start()
            else:
                logger.warning("Redis refused the pop (%s); waiting before the next one", exc)
                self._wait_for_bell()
            raise Empty() from None
        self._in_poll = None
        self._flush_brpop_reauth()
        if awaiting != "pop":
            # A bell rang, or the wait timed out: pop either way (publishers without bells).
            self._brpop_start()
            raise Empty()
        if not reply:
            self._wait_for_bell()
            raise Empty()
        number, raw, delivery_tag = reply
        queue = self._pop_queues[int(number) - 1]
        self._queue_cycle.rotate(queue)
        self._deliver_popped(queue, raw, bytes_to_str(delivery_tag))
        return True

    def _deliver_popped(self, queue: str, raw: bytes, delivery_tag: str) -> None:
        """Hand a popped (and already held) message to the consumer; bury it if that fails."""
        try:
            payload = loads(bytes_to_str(raw))
            if not isinstance(payload, dict) or not isinstance(payload.get("properties"), dict):
                raise ValueError("not a JSON object with a properties object")
            payload["properties"]["delivery_tag"] = delivery_tag
        except Exception as exc:  # any shape of garbage: never the consumer's death
            self._bury_raw(delivery_tag, raw, queue, f"cannot decode: {type(exc).__name__}: {exc}")
            return
        self.popped_from[delivery_tag] = queue
        try:
            self.connection._deliver(payload, queue)
        except self.connection_errors:
            raise
        except Exception as exc:
            logger.exception("message %s on %s crashed its consumer; dead-lettering it", delivery_tag, queue)
            self.qos.forget(delivery_tag)
            self._bury_raw(delivery_tag, raw, queue, f"crashed the consumer: {type(exc).__name__}: {exc}")

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        """Synchronous get (``basic_get``): the same atomic pop, for one queue."""
        with self.conn_or_acquire() as client:
            for _ in range(MAX_BURIED_PER_POP):
                command = self._pop_command([queue])
                reply = self._script(client, "_pop_sha", *command[2:])
                if not reply:
                    self._maybe_update_queues_expire(client, queue)
                    raise Empty()
                _, raw, tag = reply
                delivery_tag = bytes_to_str(tag)
                try:
                    payload = loads(bytes_to_str(raw))
                    payload["properties"]["delivery_tag"] = delivery_tag
                except Exception as exc:
                    self._bury_raw(delivery_tag, raw, queue, f"cannot decode: {type(exc).__name__}: {exc}")
                    continue
                self._maybe_update_queues_expire(client, queue)
                return payload  # type: ignore[no-any-return]
        raise Empty()

    # --- dead letters ------------------------------------------------------------------
    def _bury_raw(self, delivery_tag: str, raw: bytes | str, queue: str, reason: str) -> bool:
        entry = dead_letter_entry(queue, reason, raw)
        with self.conn_or_acquire() as client:
            moved = bool(
                self._script(
                    client,
                    "_bury_sha",
                    3,
                    self.unacked_key,
                    self.unacked_index_key,
                    self.dead_letter_key,
                    delivery_tag,
                    entry,
                )
            )
        logger.error(
            "dead-lettered a message from %r (%s) into %r: %.300r",
            queue,
            reason,
            self.dead_letter_key,
            raw,
        )
        return moved

    def bury(self, delivery_tag: str, payload: dict[str, Any] | None, *, queue: str, reason: str) -> bool:
        """Move a held message to the dead-letter list (if it is still held)."""
        if payload is None:
            with self.conn_or_acquire() as client:
                record = client.hget(self.unacked_key, delivery_tag)
            if record is None:
                return False
            payload = loads(bytes_to_str(record))[0]
        payload = dict(payload)
        properties = dict(payload.get("properties") or {})
        properties["delivery_tag"] = original_tag(delivery_tag)
        payload["properties"] = properties
        return self._bury_raw(delivery_tag, dumps(payload), queue, reason)

    # --- publishing and restoring ring the queue's bell --------------------------------
    def _bell_commands(self, queue: str) -> list[tuple[str, tuple[Any, ...]]]:
        bell = bell_key(queue)
        return [("lpush", (bell, 1)), ("ltrim", (bell, 0, BELL_CAP - 1))]

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        pri = self._get_message_priority(message, reverse=False)
        key = self._q_for_pri(queue, pri)
        commands: list[tuple[str, tuple[Any, ...]]] = [("lpush", (key, dumps(message)))]
        commands += self._bell_commands(queue)
        if self._expires and queue in self._expires:
            lists = [self._q_for_pri(queue, p) for p in self.priority_steps] + [bell_key(queue)]
            commands += [("pexpire", (key, self._expires[queue])) for key in lists]
        publish_batch = kwargs.pop("_publish_batch", None)
        if publish_batch is not None:
            for name, args in commands:
                publish_batch.add(name, *args)
            return
        # One transaction: the bell never rings for a message that is not there.
        with self.conn_or_acquire() as client, client.pipeline() as pipe:
            for name, args in commands:
                getattr(pipe, name)(*args)
            pipe.execute()

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        try:
            headers = payload.setdefault("headers", {})
            headers[DELIVERY_COUNT_HEADER] = int(headers.get(DELIVERY_COUNT_HEADER) or 0) + 1
            payload["properties"]["delivery_tag"] = original_tag(payload["properties"]["delivery_tag"])
        except (AttributeError, KeyError, TypeError, ValueError):
            pass  # restored as it is; the pop script judges it
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        try:
            for queue in self._lookup(exchange, routing_key):
                for name, args in self._bell_commands(queue):
                    getattr(pipe, name)(*args)
        except self.connection_errors:
            raise
        except Exception:
            logger.debug("no bell for a restored message (%s, %s)", exchange, routing_key, exc_info=True)

    def close(self) -> None:
        if self._in_poll and not self.closed:
            self._settle_pending_reply()
        super().close()

    def _settle_pending_reply(self) -> None:
        """At close, read what the poll connection owes: a popped message goes straight back."""
        awaiting, self._awaiting = self._awaiting, None
        try:
            reply = self.client.parse_response(
                self.client.connection, "EVALSHA" if awaiting == "pop" else "BRPOP"
            )
            if awaiting == "pop" and reply:
                self.qos.restore_by_tag(bytes_to_str(reply[2]))
        except Exception:  # the message (if any) stays held; the visibility sweep restores it
            logger.debug("could not settle the pending pop at close", exc_info=True)
        finally:
            self._in_poll = None


class Transport(_RedisTransport):
    """kombu's Redis transport with :class:`Channel`: select it with ``broker_transport``."""

    Channel = Channel
