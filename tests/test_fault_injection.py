"""Faults as life has them, against a whole fleet on Redis (tests/support/chaos.py): workers
SIGTERMed, SIGKILLed (pod and OOM), SIGSTOPped; redis-server SIGKILLed inside its fsync
window and SIGSTOPped; connections cut, one exactly while a pop reply is in flight; gunicorn
SIGKILLed mid-submit.  Jobs go in over HTTP with an Idempotency-Key.  Every accepted job
must take effect exactly once, no refused job may run, duplicate runs stay within what the
faults explain, and the run must prove it tested something."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import chaos
from tests.support.rabbitmq import rabbitmq_binary

SEEDS = [int(s) for s in os.environ.get("FAULT_SEEDS", "11").split(",")]


def check(result: chaos.Result) -> None:
    """The assertions every chaos run must pass (the soak test uses them too)."""
    print("\n" + result.summary())
    assert not result.errors, f"the run itself went wrong: {result.errors[:5]} (log: {result.log_path})"
    assert result.settled
    assert result.lost == [], f"accepted jobs that never took effect: {result.lost}"
    assert result.doubled == [], f"jobs whose effect was applied twice: {result.doubled}"
    assert result.refused_but_ran == [], f"jobs answered 503 that ran anyway: {result.refused_but_ran}"
    assert result.duplicate_runs <= result.explained, (
        f"{result.duplicate_runs} duplicate runs, more than the injected faults explain ({result.explained})"
    )
    assert result.busy_hits >= 1, "no injection hit work in flight: the run tested nothing"
    assert result.redelivered >= 1, "no job was redelivered: the faults never interrupted a task"
    assert all(d <= chaos.GRACE for d in result.drains), f"a drain outlived the grace period: {result.drains}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_every_job_takes_effect_exactly_once_under_faults_on_redis(tmp_path: Path, seed: int) -> None:
    config = chaos.Config(seed=seed, broker="redis", injections=len(chaos.ALL_FAULTS) + 2, jobs=160)
    result = chaos.run(config, tmp_path, progress=print)
    assert set(result.by_kind()) == set(chaos.ALL_FAULTS), "every kind of fault was injected"
    check(result)


@pytest.mark.slow
def test_every_job_takes_effect_exactly_once_under_faults_on_rabbitmq(tmp_path: Path) -> None:
    """The no-compromise broker: quorum queues and publisher confirms (celery_fleet.presets)."""
    try:
        rabbitmq_binary("rabbitmq-server")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    faults = tuple(k for k in chaos.ALL_FAULTS if k not in chaos.REDIS_ONLY)
    config = chaos.Config(
        seed=SEEDS[0], broker="rabbitmq", injections=len(faults) + 1, jobs=120, faults=faults
    )
    result = chaos.run(config, tmp_path, progress=print)
    assert set(result.by_kind()) == set(faults), "every kind of fault was injected"
    assert result.broker_facts.get("default") == "quorum", result.broker_facts
    check(result)
