"""No-op tasks/s through one prefork worker: celery-fleet's safe-delivery presets against Celery's defaults.

    .venv/bin/python bench/throughput.py [--tasks 5000] [--plot throughput.png]

For each variant, on one real redis-server: empty the database, pre-fill the queue with N
identical no-op messages (published by one plain Celery app, so every variant drains the
same messages), then start one worker (``celery_fleet.roles.worker_argv``: prefork,
``--concurrency 2``, no gossip/mingle) and measure the rate between the first and the
last completion (the task INCRs a Redis counter; the first and N-th record the time).
Worker start-up is outside the measurement; everything after the first task, including
pool-process recycling, is inside it.

Variants (``bench/throughput_app.py``):

* ``defaults``: Celery's defaults (early ack, prefetch 4 x concurrency, no events);
* ``presets``: ``safe_delivery_settings`` exactly as the project sets them (task events off);
* ``fleet``: presets + ``celery_fleet.lifecycle.install`` (the project's real worker): every
  task metric on (``celery_fleet.task_metrics``: counted by the worker, written once a second),
  the follow-up queue, the one-round-trip publish;
* ``fleet-task-events``: the same with Celery's task events on as well (what Flower needs);
* ``presets-*``: the presets with one or two settings changed, to show what costs.

The goal: ``fleet`` (safe delivery with every task metric) at >= 0.95x ``defaults``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from _common import OUT_DIR, child_env, load_line, output_path, redis_server, scratch_dir, tree_cpu_seconds
from celery_fleet import roles
from celery_fleet.local.waiting import wait_until
from throughput_app import COUNTER, QUEUE, TASK_NAME, completion_key, make_app

GOAL = 0.95


@dataclass(frozen=True)
class Variant:
    name: str
    presets: bool
    lifecycle: bool = False
    overrides: dict[str, Any] | None = None
    note: str = ""


VARIANTS = {
    v.name: v
    for v in (
        Variant("defaults", presets=False, note="Celery's defaults"),
        Variant("presets", presets=True, note="safe_delivery_settings, as the project"),
        Variant(
            "fleet", presets=True, lifecycle=True, note="presets + celery_fleet.lifecycle (the real worker)"
        ),
        Variant(
            "fleet-stock-transport",
            presets=True,
            lifecycle=True,
            overrides={"broker_transport": None},
            note="fleet with kombu's stock Redis transport (BRPOP, no atomic pop): what reliable fetch costs",
        ),
        Variant(
            "fleet-task-events",
            presets=True,
            lifecycle=True,
            overrides={"worker_send_task_events": True, "task_send_sent_event": True},
            note="fleet + Celery task events (for Flower)",
        ),
        Variant(
            "presets-prefetch4",
            presets=True,
            overrides={"worker_prefetch_multiplier": 4},
            note="presets, worker_prefetch_multiplier 4",
        ),
        Variant(
            "presets-no-limits",
            presets=True,
            overrides={"task_time_limit": None, "task_soft_time_limit": None},
            note="presets, no task time limits",
        ),
        Variant(
            "fleet-no-metrics",
            presets=True,
            lifecycle=True,
            overrides={"fleet_task_metrics": False},
            note="fleet without the task metrics (what they cost)",
        ),
        Variant(
            "fleet-no-followups",
            presets=True,
            lifecycle=True,
            overrides={"fleet_followup_queue": ""},
            note="fleet without the follow-up queue (one queue to read, not two)",
        ),
        Variant(
            "presets-early-ack",
            presets=True,
            overrides={"task_acks_late": False},
            note="presets, acknowledged on receipt (at-most-once)",
        ),
        Variant(
            "presets-4-priorities",
            presets=True,
            overrides={"broker_transport_options": {"priority_steps": [0, 3, 6, 9]}},
            note="presets, kombu's 4 priority lists instead of 10",
        ),
        Variant(
            "presets-no-recycle",
            presets=True,
            overrides={"worker_max_tasks_per_child": None},
            note="presets, worker_max_tasks_per_child off",
        ),
    )
}
#: The issue's comparison plus the settings that buy throughput back; ``--variants all`` runs every one.
DEFAULT_VARIANTS = "defaults,presets,fleet,fleet-task-events"


@dataclass(frozen=True)
class Run:
    tasks: int
    seconds: float  # first to last completion
    startup: float  # worker start to first completion
    cpu_tasks: int  # completions inside the CPU window (first poll that saw one .. the last)
    worker_cpu: float  # CPU seconds of the worker and its pool processes in that window
    redis_cpu: float  # CPU seconds of redis-server in that window


@dataclass
class Result:
    variant: Variant
    runs: list[Run] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Completions per second between first and last completion, over all rounds."""
        seconds = sum(r.seconds for r in self.runs)
        return sum(r.tasks - 1 for r in self.runs) / seconds if seconds > 0 else 0.0

    @property
    def round_rates(self) -> list[float]:
        return [(r.tasks - 1) / r.seconds for r in self.runs if r.seconds > 0]

    def cpu_ms(self, which: str) -> float:
        """CPU milliseconds per task of the worker (``worker``) or the broker (``redis``)."""
        counted = sum(r.cpu_tasks for r in self.runs)
        seconds = sum(r.worker_cpu if which == "worker" else r.redis_cpu for r in self.runs)
        return seconds * 1000 / counted if counted else 0.0


def prefill(broker_url: str, tasks: int) -> float:
    """Publish ``tasks`` no-op messages with a plain Celery app over one producer; seconds taken."""
    publisher = make_app(broker_url, presets=False)
    began = time.perf_counter()
    with publisher.producer_or_acquire() as producer:
        for _ in range(tasks):
            publisher.send_task(TASK_NAME, queue=QUEUE, producer=producer)
    return time.perf_counter() - began


def run_variant(
    variant: Variant,
    broker_url: str,
    client: redis.Redis,
    tasks: int,
    concurrency: int,
    task_seconds: float,
    redis_pid: int,
    tmp: Path,
    log: Path,
) -> Run:
    """One worker drains ``tasks`` pre-filled messages."""
    client.flushdb()
    prefill(broker_url, tasks)
    queued = int(client.llen(QUEUE))
    if queued != tasks:
        raise RuntimeError(f"pre-fill left {queued} messages on {QUEUE!r}, expected {tasks}")
    env = roles.worker_env(
        child_env(
            BENCH_BROKER_URL=broker_url,
            BENCH_TOTAL=str(tasks),
            BENCH_PRESETS="1" if variant.presets else "0",
            BENCH_LIFECYCLE="1" if variant.lifecycle else "0",
            BENCH_OVERRIDES=json.dumps(variant.overrides or {}),
            BENCH_TASK_SECONDS=str(task_seconds),
        ),
        probe_dir=tmp / "probes" / variant.name if variant.lifecycle else None,
    )
    argv = roles.worker_argv(
        [QUEUE],
        hostname=f"{variant.name}@bench",
        concurrency=concurrency,
        loglevel="WARNING",
        app="throughput_app",
    )
    began = time.time()
    with log.open("ab") as fh:
        fh.write(f"\n=== {variant.name}: {' '.join(argv)}\n".encode())
        fh.flush()
        worker = subprocess.Popen(
            argv, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    # (completions, worker CPU, redis CPU) at the first poll that sees a completion, and at the end.
    marks: list[tuple[int, float, float]] = []
    try:

        def finished() -> bool:
            if worker.poll() is not None:
                raise RuntimeError(f"the {variant.name} worker exited with {worker.returncode}; see {log}")
            done = int(client.get(COUNTER) or 0)
            if done and (not marks or done >= tasks):
                marks.append((done, tree_cpu_seconds(worker.pid), tree_cpu_seconds(redis_pid)))
            return done >= tasks

        wait_until(finished, timeout=300, interval=0.05, what=f"{tasks} tasks on the {variant.name} worker")
    finally:
        worker.send_signal(signal.SIGTERM)  # a soft shutdown with nothing running: quick
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    done = int(client.get(COUNTER) or 0)
    if done != tasks:
        raise RuntimeError(f"{variant.name}: {done} completions for {tasks} tasks")
    first = float(client.get(completion_key(1)) or 0)
    last = float(client.get(completion_key(tasks)) or 0)
    (start_done, start_worker, start_redis), (end_done, end_worker, end_redis) = marks[0], marks[-1]
    return Run(
        tasks=tasks,
        seconds=last - first,
        startup=first - began,
        cpu_tasks=end_done - start_done,
        worker_cpu=end_worker - start_worker,
        redis_cpu=end_redis - start_redis,
    )


def print_table(results: list[Result]) -> None:
    base = next((r for r in results if r.variant.name == "defaults"), None)
    print()
    print(
        f"{'variant':<20} {'tasks/s':>8} {'x defaults':>10} {'worker CPU':>10} {'redis CPU':>9} "
        f"{'x defaults':>10} {'per round':>12}  what"
    )
    for result in results:
        ratio = result.rate / base.rate if base else float("nan")
        cpu = result.cpu_ms("worker") + result.cpu_ms("redis")
        cpu_ratio = cpu / (base.cpu_ms("worker") + base.cpu_ms("redis")) if base else float("nan")
        rounds = " ".join(f"{r:.0f}" for r in result.round_rates)
        name, note = result.variant.name, result.variant.note
        print(
            f"{name:<20} {result.rate:>8.0f} {ratio:>9.2f}x {result.cpu_ms('worker'):>10.3f} "
            f"{result.cpu_ms('redis'):>9.3f} {cpu_ratio:>9.2f}x {rounds:>12}  {note}"
        )
    print("(CPU = CPU ms per task; the second 'x defaults' = (worker + redis CPU) / the defaults' CPU)")
    fleet = next((r for r in results if r.variant.name == "fleet"), None)
    if base and fleet:
        ratio = fleet.rate / base.rate
        verdict = "meets" if ratio >= GOAL else "misses"
        print(
            f"goal: fleet (presets + every task metric) >= {GOAL}x defaults' tasks/s: {ratio:.2f}x, {verdict}"
        )
        cpu = (base.cpu_ms("worker") + base.cpu_ms("redis")) / (
            fleet.cpu_ms("worker") + fleet.cpu_ms("redis")
        )
        print(f"      by CPU per task (defaults' / fleet's, load-independent): {cpu:.2f}x")


def plot(results: list[Result], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.variant.name for r in results]
    xs = list(range(len(names)))
    colours = [
        "tab:grey" if n == "defaults" else "tab:blue" if n in ("presets", "fleet") else "tab:green"
        for n in names
    ]
    fig, (rate, cpu) = plt.subplots(1, 2, figsize=(max(9, 2.4 * len(names)), 4.5))
    bars = rate.bar(xs, [r.rate for r in results], color=colours)
    rate.bar_label(bars, fmt="%.0f")
    rate.set_ylabel("tasks/s (1 worker, prefork)")
    worker = [r.cpu_ms("worker") for r in results]
    cpu.bar(xs, worker, label="worker")
    cpu.bar(xs, [r.cpu_ms("redis") for r in results], bottom=worker, label="redis")
    cpu.set_ylabel("CPU ms per task")
    cpu.legend()
    for ax in (rate, cpu):
        ax.set_xticks(xs, names, rotation=20, ha="right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000, help="no-op tasks per variant and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating the order of the variants")
    parser.add_argument(
        "--task-ms", type=float, default=0.0, help="make each task sleep this long (0: a pure no-op)"
    )
    parser.add_argument("--concurrency", type=int, default=2, help="prefork pool processes")
    parser.add_argument(
        "--variants", default=DEFAULT_VARIANTS, help="comma-separated or all; from: " + ", ".join(VARIANTS)
    )
    parser.add_argument(
        "--plot", nargs="?", const="throughput.png", help="write a chart (bare name: into bench/out/)"
    )
    args = parser.parse_args()
    names = (
        list(VARIANTS)
        if args.variants == "all"
        else [n.strip() for n in args.variants.split(",") if n.strip()]
    )
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(unknown)}")
    if args.tasks < 2 or args.concurrency < 1 or args.rounds < 1 or args.task_ms < 0:
        parser.error("need --tasks >= 2, --concurrency >= 1, --rounds >= 1, --task-ms >= 0")
    print(f"start: {load_line()}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    log = OUT_DIR / "throughput-worker.log"
    log.write_bytes(b"")
    results = {name: Result(VARIANTS[name]) for name in names}
    with scratch_dir("bench-throughput-") as tmp, redis_server(tmp) as server:
        client = redis.Redis.from_url(server.url)
        assert server.process is not None
        redis_pid = server.process.pid
        for round_no in range(args.rounds):
            for name in names if round_no % 2 == 0 else names[::-1]:
                run = run_variant(
                    VARIANTS[name],
                    server.url,
                    client,
                    args.tasks,
                    args.concurrency,
                    args.task_ms / 1000,
                    redis_pid,
                    tmp,
                    log,
                )
                results[name].runs.append(run)
                rate = (run.tasks - 1) / run.seconds
                print(f"  round {round_no + 1}: {name:<20} {rate:7.0f} tasks/s ({load_line()})", flush=True)
        client.close()
    end_load = load_line()
    print_table(list(results.values()))
    print(f"end:   {end_load}")
    kind = f"{args.task_ms:g} ms sleep" if args.task_ms else "no-op"
    print(f"{args.tasks} {kind} tasks x {args.rounds} rounds per variant")
    print(f"1 worker, prefork, concurrency {args.concurrency}, --without-gossip --without-mingle")
    print(f"worker log: {log}")
    plot_path = output_path(args.plot, "throughput.png")
    if plot_path:
        plot(list(results.values()), plot_path, f"{args.tasks} x {args.rounds} tasks ({kind}) - {end_load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
