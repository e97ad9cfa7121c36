"""A corpus of malformed messages for a Redis queue: what bugs, old clients, hand pushes and
attackers put there.  Each is raw bytes, ready to ``LPUSH`` onto ``default``."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any


def envelope(
    body: bytes | str,
    *,
    headers: Any = None,
    content_type: str = "application/json",
    content_encoding: str = "utf-8",
    body_encoding: Any = "base64",
    properties: Any = None,
    queue: str = "default",
    raw_body: bool = False,
) -> dict[str, Any]:
    """A kombu Redis message; by default a well-formed Celery v2 message for an unknown task."""
    data = body.encode() if isinstance(body, str) else body
    task_id = str(uuid.uuid4())
    props = {
        "body_encoding": body_encoding,
        "delivery_tag": str(uuid.uuid4()),
        "delivery_info": {"exchange": queue, "routing_key": queue},
        "delivery_mode": 2,
        "priority": 0,
        "correlation_id": task_id,
    }
    if properties is not None:
        props = properties
    return {
        "body": data.decode("latin-1") if raw_body else base64.b64encode(data).decode(),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": {"lang": "py", "task": "jobs.tasks.noop", "id": task_id, "retries": 0}
        if headers is None
        else headers,
        "properties": props,
    }


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


#: Well-formed enough for Celery: it runs the task (which may fail) and acknowledges it.
RUNS_AS_A_TASK = frozenset(
    {
        "delivery_info missing",
        "content-encoding unknown",
        "body args not a list",
        "body kwargs not a dict",
        "body embed not a dict",
    }
)


def corpus() -> list[tuple[str, bytes]]:
    """(name, raw) pairs: at least 50, the seven that crashed workers before among them.

    Every one but those in :data:`RUNS_AS_A_TASK` must end in the dead-letter list.
    """
    good_body = dumps([[], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    items: list[tuple[str, bytes]] = [
        # The seven that made kombu's own transport (or Celery behind it) exit "Unrecoverable error".
        ("empty JSON list", b"[]"),
        ("list of numbers", b"[1,2,3]"),
        ("an unacked-record-shaped list", b'[{},"","default"]'),
        ("JSON nested 100k deep", b"[" * 100_000 + b"]" * 100_000),
        ("body that is not base64", dumps(envelope("x", raw_body=True) | {"body": "not base64!!"})),
        ("unknown body_encoding", dumps(envelope(good_body, body_encoding="rot13"))),
        ("base64 body that is JSON but not [args, kwargs, embed]", dumps(envelope(dumps({"not": "a task"})))),
        # Not JSON at all.
        ("empty", b""),
        ("a space", b" "),
        ("garbage bytes", b"\x00\xff\xfe garbage"),
        ("invalid UTF-8 inside JSON", b'{"body": "\xff\xfe", "properties": {"delivery_tag": "t"}}'),
        ("truncated JSON", dumps(envelope(good_body))[:-7]),
        ("pickle bytes", b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01."),
        ("HTML", b"<html><body>502 Bad Gateway</body></html>"),
        ("NaN", b"NaN"),
        ("JSON with a trailing comma", b'{"a": 1,}'),
        ("a huge number", b"1" + b"0" * 5000),
        # JSON, but not a message.
        ("null", b"null"),
        ("true", b"true"),
        ("a number", b"42"),
        ("a string", b'"just a string"'),
        ("empty object", b"{}"),
        ("properties null", b'{"properties": null, "body": ""}'),
        ("properties a list", b'{"properties": [], "body": ""}'),
        ("properties empty", b'{"properties": {}, "body": ""}'),
        ("delivery_tag a number", b'{"properties": {"delivery_tag": 7}, "body": ""}'),
        ("delivery_tag null", b'{"properties": {"delivery_tag": null}, "body": ""}'),
        ("only a delivery tag", b'{"properties": {"delivery_tag": "lonely"}}'),
        ("list of envelopes", dumps([envelope(good_body), envelope(good_body)])),
        ("nested 500 deep object", b'{"a":' * 500 + b"1" + b"}" * 500),
        # Envelopes whose parts are the wrong shape.
        ("headers a list", dumps(envelope(good_body, headers=[1, 2]))),
        ("headers a string", dumps(envelope(good_body, headers="task=jobs.tasks.noop"))),
        ("headers null", dumps(envelope(good_body) | {"headers": None})),
        ("task name a number", dumps(envelope(good_body, headers={"task": 12, "id": "x"}))),
        ("task name null", dumps(envelope(good_body, headers={"task": None, "id": "x"}))),
        ("unknown task", dumps(envelope(good_body, headers={"task": "no.such.task", "id": "unknown-1"}))),
        ("task id missing", dumps(envelope(good_body, headers={"task": "jobs.tasks.noop"}))),
        (
            "delivery_info missing",
            dumps(envelope(good_body, properties={"delivery_tag": "di", "body_encoding": "base64"})),
        ),
        (
            "delivery_info a string",
            dumps(
                envelope(
                    good_body,
                    properties={"delivery_tag": "ds", "delivery_info": "x", "body_encoding": "base64"},
                )
            ),
        ),
        ("body_encoding null", dumps(envelope(good_body, body_encoding=None))),
        ("body a number", dumps(envelope(good_body) | {"body": 12345})),
        ("body a list", dumps(envelope(good_body) | {"body": [1, 2]})),
        ("body an object", dumps(envelope(good_body) | {"body": {"a": 1}})),
        (
            "content-type pickle",
            dumps(
                envelope(
                    b"\x80\x04K\x01.",
                    content_type="application/x-python-serialize",
                    content_encoding="binary",
                )
            ),
        ),
        ("content-type yaml", dumps(envelope(b"- a\n- b\n", content_type="application/x-yaml"))),
        ("content-type unknown", dumps(envelope(good_body, content_type="application/x-nonsense"))),
        ("content-type a number", dumps(envelope(good_body) | {"content-type": 5})),
        ("content-encoding unknown", dumps(envelope(good_body, content_encoding="ebcdic"))),
        ("body not JSON", dumps(envelope(b"{{{{"))),
        ("body JSON null", dumps(envelope(b"null"))),
        ("body an empty list", dumps(envelope(b"[]"))),
        ("body args not a list", dumps(envelope(dumps([5, {}, {}])))),
        ("body kwargs not a dict", dumps(envelope(dumps([[], [], {}])))),
        ("body embed not a dict", dumps(envelope(dumps([[], {}, "x"])))),
        ("body four items", dumps(envelope(dumps([[], {}, {}, {}])))),
        ("body invalid UTF-8", dumps(envelope(b"\xff\xfe\xfd"))),
        (
            "gzip compression, not gzip",
            dumps(
                envelope(good_body)
                | {"headers": {"task": "jobs.tasks.noop", "id": "gz", "compression": "application/x-gzip"}}
            ),
        ),
        (
            "unknown compression",
            dumps(
                envelope(good_body)
                | {"headers": {"task": "jobs.tasks.noop", "id": "cz", "compression": "zstd-9000"}}
            ),
        ),
    ]
    return items
