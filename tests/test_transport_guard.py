"""The malformed-payload guard around kombu's Redis decode (pure logic)."""

from __future__ import annotations

import base64
import json

from celery_fleet.transport import MALFORMED_CONTENT_TYPE, safe_loads


def test_envelopes_and_unacked_records_pass_through() -> None:
    decode = safe_loads(json.loads)
    envelope = {"body": "e30=", "properties": {"delivery_tag": "t"}, "headers": {}}
    assert decode(json.dumps(envelope)) == envelope
    record = [envelope, "default", "default"]
    assert decode(json.dumps(record)) == record


def test_garbage_becomes_a_rejectable_envelope_keeping_the_bytes() -> None:
    decode = safe_loads(json.loads)
    for raw in ("not json", '"just a string"', '{"body": "x"}', "42"):
        wrapped = decode(raw)
        assert wrapped["content-type"] == MALFORMED_CONTENT_TYPE
        assert base64.b64decode(wrapped["body"]) == raw.encode()
        assert wrapped["properties"]["delivery_tag"]
