"""Scale-down and rollout step times: Celery's own drain against celery-fleet's, side by side.

A *scale-down step* is SIGTERM to a busy worker until it has exited; a *rollout step* starts
the replacement worker, waits until it is ready, then stops the old (busy) one.  Both run
with the production drain window (``--drain-window``, 30 s) and a task that ends
``--task-seconds`` after the SIGTERM.  Celery sleeps the whole window once any task runs;
celery-fleet's drain (celery_fleet.drain) ends when the task does.

    .venv/bin/python bench/drain.py [--samples 3] [--drain-window 30] [--task-seconds 3]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.fleet import Fleet, base_env, migrate
from tests.support.ledger import enqueue_timed_work, read_runs

from _common import load_line, redis_server, scratch_dir
from celery_fleet.local.waiting import wait_until

MODES = {"celery": "0", "celery-fleet": "1"}


def step(fleet: Fleet, mode: str, kind: str, n: int, window: int, task_seconds: float) -> float:
    env = {
        "CELERY_FLEET_DRAIN_WINDOW": str(window),
        "CELERY_TASK_SOFT_TIME_LIMIT": str(window * 4),
        "CELERY_TASK_TIME_LIMIT": str(window * 4 + 10),
        "CELERY_FLEET_DRAIN_ENDS_WITH_WORK": MODES[mode],
    }
    old = fleet.start_worker(("default",), extra_env=env)
    key = f"{mode}-{kind}-{n}"
    enqueue_timed_work(fleet.env["CELERY_BROKER_URL"], [(key, task_seconds + 1.0)])
    wait_until(
        lambda: (run := read_runs(fleet.data_dir / "db.sqlite3").get(key)) is not None and run.starts,
        timeout=60,
        what="the task to start",
    )
    time.sleep(1.0)  # SIGTERM one second into the task: it ends task_seconds later
    began = time.monotonic()
    new = fleet.start_worker(("default",), extra_env=env) if kind == "rollout" else None
    old.send(signal.SIGTERM)
    assert old.wait(window + 60) is not None, "the old worker did not exit"
    seconds = time.monotonic() - began
    if new is not None:
        new.stop(signal.SIGTERM, timeout=window + 30)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--drain-window", type=int, default=30)
    parser.add_argument("--task-seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(load_line())
    results: dict[tuple[str, str], list[float]] = {}
    with scratch_dir("bench-drain-") as tmp, redis_server(tmp) as redis:
        env = base_env(tmp, redis.url)
        migrate(env)
        fleet = Fleet(data_dir=tmp, env=env, log_path=tmp / "fleet.log")
        try:
            for n in range(args.samples):
                for kind in ("scale-down", "rollout"):
                    for mode in MODES:  # interleaved, so load drifts hit both alike
                        seconds = step(fleet, mode, kind, n, args.drain_window, args.task_seconds)
                        results.setdefault((kind, mode), []).append(seconds)
                        print(f"  {kind:<10} {mode:<12} {seconds:5.1f}s", flush=True)
        finally:
            fleet.stop_all()
    print(
        f"\ndrain window {args.drain_window}s, the task ends {args.task_seconds:.0f}s after SIGTERM, "
        f"{args.samples} samples (median):"
    )
    print(f"{'step':<12}{'Celery':>10}{'celery-fleet':>15}{'ratio':>8}")
    for kind in ("scale-down", "rollout"):
        before = statistics.median(results[(kind, "celery")])
        after = statistics.median(results[(kind, "celery-fleet")])
        print(f"{kind:<12}{before:>9.1f}s{after:>14.1f}s{before / after:>7.1f}x")


if __name__ == "__main__":
    main()
