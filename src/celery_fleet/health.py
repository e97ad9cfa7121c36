"""Readiness checks that touch the real dependency, each on a fresh connection."""

from __future__ import annotations

import threading

from kombu import Connection

#: Set when the process starts shutting down; readiness answers 503 from then on.
shutting_down = threading.Event()


def check_broker(url: str, timeout: float = 3.0) -> None:
    """A full round trip to the broker on a new connection; raises on failure.

    A pooled connection could answer from a socket that is already dead, so this
    opens its own: Redis answers ``PING``; AMQP opens a channel (a broker round trip).
    """
    with Connection(url, connect_timeout=timeout, transport_options={"socket_timeout": timeout}) as conn:
        conn.ensure_connection(max_retries=0, timeout=int(timeout) or 1)
        channel = conn.default_channel
        client = getattr(channel, "client", None)
        if client is not None and hasattr(client, "ping"):
            client.ping()
