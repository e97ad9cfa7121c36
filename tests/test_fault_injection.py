"""Faults as life has them, against a whole fleet (tests/support/chaos.py): workers SIGTERMed,
SIGKILLed (pod and OOM), SIGSTOPped; the broker SIGKILLed, crashed with its node (Redis: the
unsynced tail of the append-only file lost) and SIGSTOPped; connections cut, one exactly while
a pop reply is in flight; gunicorn SIGKILLed mid-submit.  Jobs go in over HTTP with an
Idempotency-Key.  Every accepted job must take effect exactly once, no refused job may run,
duplicate runs stay within what the faults explain, and the run must prove it tested
something.

On Redis this is the soak command itself, short (``bench/soak.py``, 100 injections: what CI
runs; the README has the 1,000-injection table); on RabbitMQ one run in-process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import chaos
from tests.support.fleet import REPO
from tests.support.rabbitmq import skip_unless_installed

SEED = int(os.environ.get("FAULT_SEED", "5"))


def check(result: chaos.Result) -> None:
    """The assertions every chaos run must pass (bench/soak.py applies the same)."""
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
def test_every_job_takes_effect_exactly_once_under_faults_on_redis() -> None:
    """``bench/soak.py`` with 100 injections on one fleet; it exits 1 on any of check()'s failures."""
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "soak.py"),
            *("--seeds", str(SEED), "--injections", "100", "--pace", "0.2,0.6", "--jobs-per-injection", "2"),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    print(out.stdout[-6000:], out.stderr[-3000:])
    assert out.returncode == 0, (
        "the soak found lost, doubled or unexplained runs, or tested nothing (table above)"
    )
    total = re.search(r"^\s*total\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out.stdout, re.MULTILINE)
    assert total is not None, "no table"
    injections, busy, jobs, lost, doubled = (int(x) for x in total.groups())
    assert injections >= 100
    assert busy >= 1
    assert jobs >= 200
    assert (lost, doubled) == (0, 0)
    kinds = re.search(r"^injections by kind: (.*)$", out.stdout, re.MULTILINE)
    assert kinds is not None
    assert {k.rsplit(" ", 1)[0] for k in kinds.group(1).split(", ")} == set(chaos.ALL_FAULTS)


@pytest.mark.slow
def test_every_job_takes_effect_exactly_once_under_faults_on_rabbitmq(tmp_path: Path) -> None:
    """The no-compromise broker: quorum queues and publisher confirms (celery_fleet.presets)."""
    skip_unless_installed()
    faults = tuple(k for k in chaos.ALL_FAULTS if k not in chaos.REDIS_ONLY)
    config = chaos.Config(seed=SEED, broker="rabbitmq", injections=len(faults) + 1, jobs=120, faults=faults)
    result = chaos.run(config, tmp_path, progress=print)
    assert set(result.by_kind()) == set(faults), "every kind of fault was injected"
    assert result.broker_facts.get("default") == "quorum", result.broker_facts
    check(result)
