"""Autoscaling on the local fleet, measured: real Redis, real Celery workers, real tasks.

Usage: ``.venv/bin/python bench/autoscale.py [--bursts 2 --burst-tasks 100 --task-seconds 2 ...]``

The same bursty workload (``--bursts`` bursts of ``--burst-tasks`` ``jobs.tasks.timed_work``
tasks, one every ``--gap`` seconds) runs three times on one worker group of at most
``--max-workers`` workers, and a table compares, side by side:

* (a) **celery-fleet**: the recommended policy through ``LocalAutoscaler`` (decides every 5 s,
  backlog = waiting + held, idle workers drained first);
* (b) **fixed max**: ``--max-workers`` workers all the time;
* (c) **keda-defaults**: KEDA's defaults in real time - queue length only (held messages not
  counted), listLength 5, activation from zero on a 30 s poll, and the HPA KEDA creates
  without ``spec.behavior``: sync every 15 s, the largest recommendation of the last 300 s,
  scale-up capped at max(2 x current, 4); 300 s cooldown to zero.  Nothing is scaled down in
  time; the measurement window simply ends before KEDA's cooldown, so its worker-seconds are
  a lower bound (its workers would keep running up to 300 s longer).

Per variant: time from each burst to the first *added* worker running a task, time to drain
each burst (publish to the last of its tasks applied), worker-seconds over the whole window
(every worker process alive, starting and draining ones included), max workers, and tasks
interrupted by scale-down (a task that started twice: cut short and redelivered).  Every task
is checked: applied exactly once.  A PNG (the simulator's plot: backlog, workers and
worker-seconds over time, totals as bars) goes to bench/out/.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = REPO / "example"  # the bundled example project, beside the library
sys.path.insert(0, str(REPO / "src"))
sys.path.append(str(EXAMPLE_DIR))

from celery_fleet import roles  # noqa: E402
from celery_fleet.autoscale.local import (  # noqa: E402
    GroupTarget,
    LocalAutoscaler,
    WorkerGroupsControl,
    group_policy,
    redis_stats_reader,
)
from celery_fleet.autoscale.policy import (  # noqa: E402
    KEDA_POLLING_INTERVAL_SECONDS,
    Autoscaler,
    QueueMetrics,
    ScalingPolicy,
    policy_from_keda_defaults,
)
from celery_fleet.autoscale.simulate.plot import (  # noqa: E402
    Timeline,
    Totals,
    plot_timelines,
    require_matplotlib,
)
from celery_fleet.exporter.redis_accounting import queue_stats  # noqa: E402
from celery_fleet.lifecycle import worker_load  # noqa: E402
from celery_fleet.local.processes import file_sink  # noqa: E402
from celery_fleet.local.redis_server import RedisServer  # noqa: E402
from celery_fleet.local.waiting import free_port, wait_until  # noqa: E402
from celery_fleet.local.workers import LocalWorker, WorkerGroup, WorkerGroupSpec  # noqa: E402

QUEUE = "default"


@dataclass
class Sample:
    t: float
    workers: int
    replicas: int
    backlog: int
    #: Worker-seconds spent up to this sample.
    worker_seconds: float


@dataclass
class Outcome:
    label: str
    first_added_consuming: list[float | None] = field(default_factory=list)
    drain: list[float] = field(default_factory=list)
    worker_seconds: float = 0.0
    max_workers: int = 0
    interrupted: int = 0
    lost: int = 0
    samples: list[Sample] = field(default_factory=list)
    note: str = ""


def base_env(data_dir: Path, broker_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_", "DATABASE_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="fleetsite.settings",
        PYTHONPATH=str(EXAMPLE_DIR),
        CELERY_FLEET_DATA_DIR=str(data_dir),
        CELERY_BROKER_URL=broker_url,
        DATABASE_URL=f"sqlite:///{data_dir / 'db.sqlite3'}",
        SECRET_KEY="bench-secret-key-not-for-production",
        DEBUG="0",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    return env


def publish(items: list[tuple[str, float]]) -> None:
    from fleetsite.celery import app

    with app.connection_for_write() as conn:
        producer = app.amqp.Producer(conn)
        for key, seconds in items:
            app.send_task(
                "jobs.tasks.timed_work", args=(key, seconds), task_id=key, queue=QUEUE, producer=producer
            )


def ledger(db: Path) -> dict[str, tuple[int, int, float | None]]:
    with sqlite3.connect(db, timeout=30) as conn:
        rows = conn.execute("SELECT key, starts, effects, finished_at FROM jobs_workrun").fetchall()
    out: dict[str, tuple[int, int, float | None]] = {}
    for key, starts, effects, finished in rows:
        when = None
        if finished:
            stamp = datetime.fromisoformat(str(finished))
            when = (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()  # Django stores UTC
        out[key] = (starts, effects, when)
    return out


class KedaDefaults:
    """KEDA's loop: activation checks every 30 s, the HPA's reconcile every 15 s."""

    def __init__(self, group: WorkerGroup, read: object, policy: ScalingPolicy) -> None:
        self.group, self.read, self.scaler = group, read, Autoscaler(policy)
        self.started = time.monotonic()
        self.log: list[str] = []

    def run(self, stop: threading.Event) -> None:
        # KEDA's poll phase relative to a burst is arbitrary; start half a period in, so the
        # first poll after the first burst comes 15 s later: the average case, not the worst.
        tick = 15
        while not stop.wait(1.0):
            tick += 1
            current = self.group.replicas()
            period = KEDA_POLLING_INTERVAL_SECONDS if current == 0 else 15.0
            if tick % int(period):
                continue
            s = queue_stats(self.read, [QUEUE])[QUEUE]
            m = QueueMetrics(waiting=s.waiting, held=s.held, oldest_age_seconds=s.oldest_age_seconds or 0.0)
            d = self.scaler.decide(time.monotonic(), current, m)
            self.log.append(d.log_line(QUEUE))
            if d.desired > current:
                self.group.scale_up(d.desired - current)
            elif d.desired < current:
                self.group.scale_down(current - d.desired)


def run_variant(
    label: str,
    args: argparse.Namespace,
    env: dict[str, str],
    data_dir: Path,
    broker_url: str,
    redis_client: object,
) -> Outcome:
    import redis as redis_mod

    assert isinstance(redis_client, redis_mod.Redis)
    redis_client.flushall()
    out = Outcome(label)
    fixed = label == "fixed max"
    spec = WorkerGroupSpec(QUEUE, (QUEUE,), min_workers=args.min_workers, max_workers=args.max_workers)
    group = WorkerGroup(
        spec=spec,
        env=env,
        probe_root=data_dir / "probes" / label.replace(" ", "-"),
        sink=file_sink(data_dir / f"{label.replace(' ', '-')}.log"),
        grace_period=60.0,
        celery_app="fleetsite",
        loglevel="WARNING",
    )
    stop = threading.Event()
    try:
        initial = args.max_workers if fixed else (0 if label == "keda-defaults" else args.min_workers)
        if initial:
            group.scale_up(initial)
            wait_until(
                lambda: all(w.ready() for w in group.workers), timeout=180, what=f"{label}: workers ready"
            )
        loops: list[threading.Thread] = []
        if label == "celery-fleet":
            policy = group_policy(args.min_workers, args.max_workers, 1)
            scaler = LocalAutoscaler(
                WorkerGroupsControl({QUEUE: group}),
                [GroupTarget(QUEUE, (QUEUE,), policy)],
                redis_stats_reader(broker_url),
                log=lambda line: None,
            )
            loops.append(
                threading.Thread(target=scaler.run, args=(stop, policy.sync_period_seconds), daemon=True)
            )
        elif label == "keda-defaults":
            keda = KedaDefaults(group, redis_client, policy_from_keda_defaults(max_replicas=args.max_workers))
            loops.append(threading.Thread(target=keda.run, args=(stop,), daemon=True))

        known: dict[str, float] = {}  # worker name -> created (monotonic)
        consuming: dict[str, float] = {}
        t0 = time.monotonic()
        wall0 = time.time()
        burst_at: list[float] = []

        def sample() -> None:
            last = time.monotonic()
            while not stop.wait(0.5):
                now = time.monotonic()
                live: list[LocalWorker] = [w for w in group.workers + group.draining if w.process.alive()]
                for w in live:
                    known.setdefault(w.name, w.process.started_at)
                    load = worker_load(w.probe_dir)
                    if load is not None and load[0] > 0 and w.name not in consuming:
                        consuming[w.name] = now
                try:
                    backlog = queue_stats(redis_client, [QUEUE])[QUEUE].backlog
                except Exception:
                    backlog = -1
                out.worker_seconds += len(live) * (now - last)
                last = now
                out.samples.append(Sample(now - t0, len(live), group.replicas(), backlog, out.worker_seconds))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for loop in loops:
            loop.start()
        keys: list[list[str]] = []
        for b in range(args.bursts):
            at = t0 + b * args.gap
            time.sleep(max(0.0, at - time.monotonic()))
            items = [(f"{label[:4]}-{b}-{i}", args.task_seconds) for i in range(args.burst_tasks)]
            burst_at.append(time.monotonic())
            publish(items)
            keys.append([k for k, _ in items])
        window_end = t0 + args.bursts * args.gap
        db = data_dir / "db.sqlite3"
        all_keys = {k for ks in keys for k in ks}

        def done() -> bool:
            runs = ledger(db)
            return all(k in runs and runs[k][1] == 1 for k in all_keys)

        wait_until(done, timeout=args.gap * 4 + 600, interval=1.0, what=f"{label}: every task applied")
        time.sleep(max(0.0, window_end - time.monotonic()))
        stop.set()
        for loop in loops:
            loop.join(timeout=30)
        sampler.join(timeout=10)
    finally:
        stop.set()
        group.stop_all()

    runs = ledger(db)
    for b, ks in enumerate(keys):
        finished = [runs[k][2] for k in ks if runs[k][2] is not None]
        publish_wall = wall0 + (burst_at[b] - t0)
        out.drain.append(max(finished) - publish_wall if finished else float("nan"))
        added = [n for n, c in known.items() if c >= burst_at[b] - 0.5 and n in consuming]
        firsts = [consuming[n] - burst_at[b] for n in added if consuming[n] >= burst_at[b]]
        out.first_added_consuming.append(min(firsts) if firsts else None)
    out.interrupted = sum(1 for k in all_keys if runs[k][0] > 1)
    out.lost = sum(1 for k in all_keys if runs[k][1] != 1)
    out.max_workers = max((s.workers for s in out.samples), default=0)
    if label == "keda-defaults":
        out.note = "window ends before KEDA's 300 s cooldown: worker-seconds are a lower bound"
    return out


def fmt_list(values: list[float | None], unit: str = "s") -> str:
    return " / ".join("-" if v is None else f"{v:.1f}{unit}" for v in values)


def report(outcomes: list[Outcome], args: argparse.Namespace, elapsed: float) -> str:
    lines = [
        f"bursty workload: {args.bursts} bursts x {args.burst_tasks} timed_work tasks "
        f"of {args.task_seconds:g} s, "
        f"one every {args.gap:g} s; window {args.bursts * args.gap:g} s; max {args.max_workers} workers, "
        f"concurrency 1; celery-fleet min {args.min_workers}; run took {elapsed:.0f} s",
        "",
        f"{'':<28}" + "".join(f"{o.label:>26}" for o in outcomes),
        f"{'first added worker consuming':<28}"
        + "".join(f"{fmt_list(o.first_added_consuming):>26}" for o in outcomes),
        f"{'burst drained after':<28}" + "".join(f"{fmt_list(list(o.drain)):>26}" for o in outcomes),
        f"{'worker-seconds':<28}" + "".join(f"{o.worker_seconds:>26.0f}" for o in outcomes),
        f"{'max workers':<28}" + "".join(f"{o.max_workers:>26d}" for o in outcomes),
        f"{'interrupted by scale-down':<28}" + "".join(f"{o.interrupted:>26d}" for o in outcomes),
        f"{'not applied exactly once':<28}" + "".join(f"{o.lost:>26d}" for o in outcomes),
    ]
    by = {o.label: o for o in outcomes}
    ours, fixed = by.get("celery-fleet"), by.get("fixed max")
    if ours and fixed:
        drain_ratio = max(a / b for a, b in zip(ours.drain, fixed.drain, strict=True))
        ws_ratio = ours.worker_seconds / fixed.worker_seconds
        ok = drain_ratio <= 1.25 and ws_ratio <= 0.60 and ours.interrupted == 0 and ours.lost == 0
        lines += [
            "",
            f"goal: drain <= 1.25x fixed (worst burst: {drain_ratio:.2f}x), worker-seconds <= 60% of fixed "
            f"({ws_ratio:.0%}), 0 interrupted ({ours.interrupted}): {'MET' if ok else 'NOT MET'}",
        ]
    lines += [f"note ({o.label}): {o.note}" for o in outcomes if o.note]
    return "\n".join(lines)


def plot(outcomes: list[Outcome], path: Path) -> None:
    """The simulator's picture, from real runs: backlog, worker processes, worker-seconds."""
    plot_timelines(
        [
            Timeline(
                o.label,
                [s.t for s in o.samples],
                [max(s.backlog, 0) for s in o.samples],
                [s.workers for s in o.samples],
                [s.worker_seconds for s in o.samples],
            )
            for o in outcomes
        ],
        path,
        title="bench/autoscale.py: local fleet, real workers",
        totals=[
            Totals("worker-seconds (the cost)", {o.label: o.worker_seconds for o in outcomes}),
            Totals(
                "slowest burst drained after (s)",
                {o.label: max(o.drain, default=0.0) for o in outcomes},
                fmt="{:.0f} s",
            ),
        ],
        time_label="seconds since the first burst",
        workers_label="worker processes",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bursts", type=int, default=2)
    parser.add_argument("--burst-tasks", type=int, default=150)
    parser.add_argument("--task-seconds", type=float, default=3.0)
    parser.add_argument(
        "--gap", type=float, default=240.0, help="seconds between bursts (and after the last)"
    )
    parser.add_argument("--max-workers", type=int, default=6)
    parser.add_argument("--min-workers", type=int, default=1, help="celery-fleet's minimum")
    parser.add_argument(
        "--variants", default="celery-fleet,fixed max,keda-defaults", help="comma-separated subset, in order"
    )
    parser.add_argument("--plot", type=Path, default=REPO / "bench" / "out" / "autoscale.png")
    args = parser.parse_args()
    if args.bursts < 1 or args.burst_tasks < 1 or args.max_workers < 1 or args.gap <= 0:
        parser.error("--bursts, --burst-tasks, --max-workers must be >= 1 and --gap > 0")
    require_matplotlib()  # before a 24-minute run, not after it

    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-autoscale-") as tmp:
        data_dir = Path(tmp)
        server = RedisServer(data_dir=data_dir / "redis", port=free_port()).start()
        try:
            env = base_env(data_dir, server.url)
            os.environ.update(env)
            subprocess.run(
                roles.manage_argv("migrate", "--no-input", "-v", "0"), env=env, check=True, timeout=300
            )
            import redis

            client = redis.Redis(host=server.host, port=server.port)
            outcomes = []
            for label in [v.strip() for v in args.variants.split(",") if v.strip()]:
                print(f"running {label} ...", flush=True)
                outcomes.append(run_variant(label, args, env, data_dir, server.url, client))
            client.close()
        finally:
            server.stop()
    print()
    print(report(outcomes, args, time.monotonic() - began))
    plot(outcomes, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
