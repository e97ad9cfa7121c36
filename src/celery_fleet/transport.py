"""A guard for the Redis transport: a malformed payload must not kill the worker.

kombu's Redis channel decodes each popped payload with ``json.loads``; garbage in a
queue list (a hand-pushed string, a truncated write) raises inside the consumer, and
Celery treats that as an unrecoverable error: the worker exits, restarts, pops the
next garbage, and so on.  :func:`install` wraps that decode: a payload that is not a
kombu envelope becomes an envelope of content type ``application/x-malformed``, which
Celery's own path then rejects (acknowledged, logged with the body) like any message
it cannot deserialize, and the worker carries on.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Callable
from typing import Any

from kombu.transport import redis as kombu_redis

logger = logging.getLogger("celery_fleet.transport")

MALFORMED_CONTENT_TYPE = "application/x-malformed"
_installed = False


def wrap_malformed(raw: str | bytes) -> dict[str, Any]:
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    return {
        "body": base64.b64encode(data).decode("ascii"),
        "content-encoding": "binary",
        "content-type": MALFORMED_CONTENT_TYPE,
        "headers": {},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": "", "routing_key": ""},
            "delivery_mode": 2,
            "priority": 0,
        },
    }


def safe_loads(loads: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def decode(raw: Any) -> Any:
        try:
            payload = loads(raw)
        except ValueError:
            payload = None
        # Lists are the transport's own [message, exchange, routing_key] records in `unacked`.
        if isinstance(payload, list) or (
            isinstance(payload, dict) and isinstance(payload.get("properties"), dict)
        ):
            return payload
        logger.error("malformed message on the broker (not a kombu envelope), rejecting it: %.200r", raw)
        return wrap_malformed(raw)

    return decode


def install() -> None:
    """Patch kombu's Redis transport once per process (idempotent)."""
    global _installed
    if _installed:
        return
    kombu_redis.loads = safe_loads(kombu_redis.loads)  # type: ignore[attr-defined]
    _installed = True
