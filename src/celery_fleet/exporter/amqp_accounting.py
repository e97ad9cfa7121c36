"""Messages and consumers per queue on RabbitMQ (``amqp://``), one passive declare per queue.

A passive ``queue.declare`` returns the queue's ready-message count and its consumer
count without creating anything.  What RabbitMQ does not hand out this way, and so is
Redis-only in this exporter: the age of the oldest message (it would need a ``basic.get``
that changes the queue), per-priority counts, and messages held unacked by consumers
(the management API has them, but this exporter does not depend on that plugin).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kombu import Connection

logger = logging.getLogger("celery_fleet.exporter.amqp")

AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://", "librabbitmq://")


def is_amqp_url(url: str) -> bool:
    return url.startswith(AMQP_SCHEMES)


@dataclass(frozen=True)
class AmqpQueueStats:
    messages: int
    consumers: int
    exists: bool


class AmqpAccounting:
    """Keeps one connection across scrapes; reconnects after a broker error."""

    def __init__(self, broker_url: str, *, timeout: float = 5.0) -> None:
        self.broker_url = broker_url
        self.timeout = timeout
        self._connection: Any = None
        self._channel: Any = None

    def _ensure_channel(self) -> Any:
        if self._connection is None:
            self._connection = Connection(self.broker_url, connect_timeout=self.timeout)
            self._connection.ensure_connection(max_retries=1, timeout=self.timeout)
        if self._channel is None:
            self._channel = self._connection.channel()
        return self._channel

    def close(self) -> None:
        try:
            if self._connection is not None:
                self._connection.release()
        finally:
            self._connection = None
            self._channel = None

    def queue_stats(self, queues: Sequence[str]) -> dict[str, AmqpQueueStats]:
        """``{queue: AmqpQueueStats}``; a queue that does not exist yet reports zeros (``exists=False``)."""
        result: dict[str, AmqpQueueStats] = {}
        try:
            for queue in queues:
                channel = self._ensure_channel()
                try:
                    ok = channel.queue_declare(queue=queue, passive=True)
                except self._connection.channel_errors as exc:
                    # NOT_FOUND closes the channel (not the connection): open a new one for the next queue.
                    if getattr(exc, "code", None) != 404 and "NOT_FOUND" not in str(exc):
                        raise
                    self._channel = None
                    result[queue] = AmqpQueueStats(messages=0, consumers=0, exists=False)
                    continue
                result[queue] = AmqpQueueStats(
                    messages=int(ok.message_count), consumers=int(ok.consumer_count), exists=True
                )
        except Exception:
            self.close()
            raise
        return result
