"""The Celery app of ``bench/throughput.py``: one no-op task that counts itself in Redis.

The worker is configured from its environment, so one module serves every variant:

* ``BENCH_BROKER_URL``: the Redis of the run (broker and counter);
* ``BENCH_PRESETS=1``: ``celery_fleet.presets.safe_delivery_settings`` as the project uses
  them (otherwise Celery's defaults);
* ``BENCH_LIFECYCLE=1``: also ``celery_fleet.lifecycle.install`` as the example's ``fleetsite.celery`` does
  (publish stamp, one-round-trip publish, task metrics, follow-ups, drain, dead-letter hook, probe files);
* ``BENCH_OVERRIDES``: JSON of Celery settings (lower-case names) applied last;
* ``BENCH_TOTAL``: how many tasks the run sends; the first and the last completion
  record their time, so the rate is measured between them;
* ``BENCH_TASK_SECONDS``: how long each task sleeps (default 0: a pure no-op).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery

from celery_fleet.presets import safe_delivery_settings
from celery_fleet.timings import Timings

QUEUE = "bench"
COUNTER = "bench:done"
TASK_NAME = "bench.noop"


def completion_key(number: int) -> str:
    return f"bench:t:{number}"


def celery_settings(
    broker_url: str, *, presets: bool, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Celery settings (lower-case names): Celery's defaults or the presets, plus ``overrides``."""
    conf: dict[str, Any] = {"broker_url": broker_url}
    if presets:
        # The project's own values: Timings() are the defaults fleetsite.settings derives.
        namespaced = safe_delivery_settings(broker_url=broker_url, timings=Timings())
        conf = {name.removeprefix("CELERY_").lower(): value for name, value in namespaced.items()}
    conf["task_default_queue"] = QUEUE
    for name, value in (overrides or {}).items():  # a dict (transport options) is merged, not replaced
        conf[name] = (
            {**conf[name], **value} if isinstance(value, dict) and isinstance(conf.get(name), dict) else value
        )
    return conf


def make_app(
    broker_url: str, *, presets: bool, lifecycle: bool = False, overrides: dict[str, Any] | None = None
) -> Celery:
    celery = Celery("throughput_app")
    celery.conf.update(celery_settings(broker_url, presets=presets, overrides=overrides))
    if lifecycle:
        from celery_fleet.lifecycle import install

        install(celery)
    celery.task(name=TASK_NAME)(noop)
    return celery


_counter: redis.Redis | None = None


def noop() -> None:
    """Count the completion; the first and the last one also record their time."""
    global _counter
    if _counter is None:  # one connection per pool process, made after the fork
        _counter = redis.Redis.from_url(os.environ["BENCH_BROKER_URL"])
    if TASK_SECONDS:
        time.sleep(TASK_SECONDS)
    done = int(_counter.incr(COUNTER))
    if done == 1 or done == TOTAL:
        _counter.set(completion_key(done), repr(time.time()))


TOTAL = int(os.environ.get("BENCH_TOTAL", "0"))
TASK_SECONDS = float(os.environ.get("BENCH_TASK_SECONDS", "0"))
app = make_app(
    os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
    presets=os.environ.get("BENCH_PRESETS") == "1",
    lifecycle=os.environ.get("BENCH_LIFECYCLE") == "1",
    overrides=json.loads(os.environ.get("BENCH_OVERRIDES") or "{}"),
)
