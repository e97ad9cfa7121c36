"""Scrape cost of queue exporters on one broker with a million queued messages.

Usage: ``.venv/bin/python bench/exporter.py [--messages 1000000 --queues 20 --workers 3 --plot]``

One real redis-server is filled (pipelined ``RPUSH``) with real Celery protocol-2 messages
(built by ``send_task``, then copied) spread over ``--queues`` queues x 4 priority lists
(0, 3, 6, 9).  ``--workers`` real Celery workers consume every queue; each takes one
long task (late acks, prefetch 1) and keeps running it, so they stay connected and
answer control commands while the queues stay full.  Then, side by side in the same run:

* **celery-fleet** - ``celery-fleet exporter``: one round trip (the queue script and the task
  totals in one pipeline), reporting waiting, held, oldest age, workers and task series;
* **bare LLEN** - ``bench/exporter_baseline.py``, the limit: the same client library and HTTP
  server, one pipelined ``LLEN`` per list and nothing else (waiting only);
* **celery-exporter** - danihodovic/celery-exporter built from its source (``--celery-exporter-src``,
  a checkout or bare git dir: by default the one ``fetch github:danihodovic/celery-exporter`` put
  under /work/.mirror; else PyPI ``prometheus-exporter-celery``), which runs broadcast ``inspect
  stats`` and ``inspect active_queues`` on every scrape;
* **celery-redis-prometheus** 2.0 (``celery -A app prometheus --queue-length``).

celery-fleet and the baseline are scraped alternately (``GET /metrics`` on kept-alive
connections, one scrape each in turn), so the machine's load hits both alike; the others one
after the other.  The table shows p50/p99 scrape time, the CPU one scrape costs in the
exporter and in the workers (broadcast inspect), and the waiting messages each reports against
the truth, then the goals: celery-fleet's p99 <= 1.5x the baseline's, and >= 100x faster than
celery-exporter.  The other exporters live in their own venvs under ``.cache/bench-venvs``
(created on first use; celery-exporter's with the pins of its own ``pyproject.toml``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import redis

from celery_fleet.local.processes import ManagedProcess, file_sink
from celery_fleet.local.redis_server import RedisServer
from celery_fleet.local.waiting import free_port, wait_until

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
VENVS = REPO / ".cache" / "bench-venvs"
PRIORITIES = (0, 3, 6, 9)
SEP = "\x06\x16"
BASELINE = "bare LLEN (limit)"
CELERY_EXPORTER_MIRROR = Path("/work/.mirror/danihodovic+celery-exporter/repo")
P99_GOAL = 1.5
SPEEDUP_GOAL = 100.0

APP_MODULE = """
import os, time
from celery import Celery
from kombu import Queue

app = Celery("benchapp", broker=os.environ["BENCH_BROKER_URL"])
app.conf.update(
    task_queues=[Queue(f"q{i}") for i in range(int(os.environ["BENCH_QUEUES"]))],
    broker_transport_options={"priority_steps": [0, 3, 6, 9], "queue_order_strategy": "priority"},
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_send_task_events=True,
    task_send_sent_event=True,
)

@app.task(name="bench.hold")
def hold(seconds):
    time.sleep(seconds)
"""


#: What Prometheus 3 sends with each scrape (its scrape/scrape.go, acceptHeader for the default
#: scrape protocols), so every exporter here renders the format a real scrape gets: OpenMetrics
#: 1.0.0 from prometheus-client.  httpx adds gzip to Accept-Encoding, as Prometheus does.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


@dataclass
class Target:
    name: str
    argv: list[str]
    port: int
    env: dict[str, str]
    queue_label: str
    timings: list[float] = field(default_factory=list)
    reported: float | None = None
    process: ManagedProcess | None = None
    client: httpx.Client = field(
        default_factory=lambda: httpx.Client(timeout=60, headers={"Accept": PROMETHEUS_ACCEPT})
    )
    exporter_cpu_ms: float = 0.0
    workers_cpu_ms: float = 0.0
    load: float = 0.0


def ensure_venv(name: str, install: list[list[str]]) -> Path:
    venv = VENVS / name
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if marker.exists():
        return python
    VENVS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for args in install:
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *args], check=True)
    marker.touch()
    return python


def celery_exporter_python(source: Path | None) -> tuple[Path, str]:
    """celery-exporter's venv: built from ``source`` (a checkout or a bare git dir) with its own
    pins, else PyPI's 0.11.2 with redis-py 8 (its pins, redis<6, clash with kombu 5.7)."""
    if source is not None and source.exists():
        git = ["git", "--git-dir", str(source)] if (source / "HEAD").is_file() else ["git", "-C", str(source)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        sha = commit.stdout.strip()
        venv = VENVS / f"celery-exporter-{sha[:10]}"
        checkout = venv / "src-checkout"
        if not (venv / ".installed").exists():
            checkout.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run([*git, "archive", sha], capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive, check=True)
        # kombu's Redis transport also needs `packaging` (its [redis] extra, not in their pins).
        python = ensure_venv(venv.name, [[str(checkout)], ["packaging"]])
        return python, f"celery-exporter {sha[:10]} (source)"
    requirements = ["arrow", "celery[redis]>=5.5,<6", "click", "Flask", "loguru", "pretty-errors"]
    requirements += ["prometheus-client==0.26.*", "redis>=8,<9", "timy", "waitress"]
    python = ensure_venv(
        "celery-exporter", [["--no-deps", "prometheus-exporter-celery==0.11.2"], requirements]
    )
    return python, "celery-exporter 0.11.2 (PyPI)"


def fill(client: redis.Redis, app_dir: Path, url: str, queues: int, messages: int) -> dict[str, int]:
    """Real messages from send_task, copied with pipelined RPUSH until ``messages`` wait."""
    sys.path.insert(0, str(app_dir))
    os.environ["BENCH_BROKER_URL"] = url
    os.environ["BENCH_QUEUES"] = str(queues)
    from benchapp import app  # type: ignore[import-not-found]
    from celery.signals import before_task_publish

    from celery_fleet.lifecycle import stamp_published_at

    before_task_publish.connect(stamp_published_at, weak=False)  # as the fleet's publishers do

    per_list = messages // (queues * len(PRIORITIES))
    batch = 1000
    began = time.perf_counter()
    sizes = []
    for q in range(queues):
        for priority in PRIORITIES:
            queue = f"q{q}"
            key = queue if priority == 0 else f"{queue}{SEP}{priority}"
            app.send_task("bench.hold", args=[3600], queue=queue, priority=priority)
            template = client.lindex(key, 0)
            assert template is not None, f"send_task put nothing on {key!r}"
            sizes.append(len(template))
            # Each copy gets its own delivery tag and task id, as real messages have.
            tag = json.loads(template)["properties"]["delivery_tag"].encode()
            task_id = json.loads(template)["headers"]["id"].encode()
            with client.pipeline(transaction=False) as pipe:
                for start in range(1, per_list, batch):
                    copies = []
                    for i in range(start, min(start + batch, per_list)):
                        suffix = f"{q:04x}{priority:x}{i:07x}".encode()
                        copies.append(
                            template.replace(tag, tag[: -len(suffix)] + suffix).replace(
                                task_id, task_id[: -len(suffix)] + suffix
                            )
                        )
                    pipe.rpush(key, *copies)
                pipe.execute()
    app.close()
    total = per_list * queues * len(PRIORITIES)
    print(
        f"filled {total:,} messages ({statistics.mean(sizes):.0f} bytes each) in "
        f"{time.perf_counter() - began:.1f}s; redis uses {client.info('memory')['used_memory_human']}"
    )
    return {"total": total}


def scrape(target: Target) -> float:
    """One GET /metrics on a kept-alive connection, as Prometheus scrapes."""
    began = time.perf_counter()
    response = target.client.get(f"http://127.0.0.1:{target.port}/metrics")
    elapsed = time.perf_counter() - began
    response.raise_for_status()
    values = re.findall(
        rf'^celery_queue_length{{[^}}]*{target.queue_label}="q\d+"[^}}]*}} ([0-9.e+]+)$', response.text, re.M
    )
    target.reported = sum(float(v) for v in values) if values else None
    return elapsed


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU of processes and their children (a prefork worker's pool)."""
    total = 0.0
    for process in processes:
        for p in [process, *process.children(recursive=True)]:
            try:
                times = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--queues", type=int, default=20)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--scrapes", type=int, default=200, help="scrapes of celery-fleet's exporter")
    parser.add_argument("--budget", type=float, default=90.0, help="seconds of scraping per other exporter")
    parser.add_argument(
        "--only-ours", action="store_true", help="only celery-fleet and the bare LLEN baseline"
    )
    parser.add_argument(
        "--celery-exporter-src",
        type=Path,
        default=CELERY_EXPORTER_MIRROR,
        help="celery-exporter's source (a checkout or bare git dir); missing: PyPI's release",
    )
    parser.add_argument(
        "--plot", nargs="?", const="exporter-scrape.png", default=None, help="write a PNG to bench/out/"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-exporter-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "benchapp.py").write_text(APP_MODULE, encoding="utf-8")
        log = file_sink(tmp / "processes.log")
        server = RedisServer(data_dir=tmp / "redis", port=free_port(), appendonly=False).start()
        processes: list[ManagedProcess] = []
        try:
            client = redis.Redis(host=server.host, port=server.port)
            truth = fill(client, tmp, server.url, args.queues, args.messages)["total"]
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))},
                "BENCH_BROKER_URL": server.url,
                "BENCH_QUEUES": str(args.queues),
                "PYTHONPATH": str(tmp),
                "PYTHONUNBUFFERED": "1",
            }
            queues = ",".join(f"q{i}" for i in range(args.queues))
            for n in range(args.workers):
                argv = [sys.executable, "-m", "celery", "-A", "benchapp", "worker", "-Q", queues]
                argv += [
                    "-c",
                    "1",
                    "-n",
                    f"bench{n}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "-l",
                    "WARNING",
                ]
                processes.append(ManagedProcess(f"worker{n}", argv, env=env, cwd=tmp, sink=log).start())
            try:
                wait_until(
                    lambda: client.hlen("unacked") >= args.workers,
                    timeout=120,
                    what="each worker to hold one long task",
                )
            except Exception:
                print((tmp / "processes.log").read_text(encoding="utf-8")[-4000:])
                raise
            held = int(client.hlen("unacked"))
            waiting_truth = truth - held

            ours = [sys.executable, "-m", "celery_fleet.cli", "exporter", "--broker-url", server.url]
            ours += ["--queues", queues, "--host", "127.0.0.1"]
            bare = [sys.executable, str(BENCH_DIR / "exporter_baseline.py"), "--broker-url", server.url]
            bare += ["--queues", queues, "--host", "127.0.0.1"]
            targets = [
                Target("celery-fleet", ours, free_port(), env, "queue_name"),
                Target(BASELINE, bare, free_port(), env, "queue_name"),
            ]
            if not args.only_ours:
                ce_python, ce_name = celery_exporter_python(args.celery_exporter_src)
                crp_python = ensure_venv(
                    "celery-redis-prometheus", [["celery-redis-prometheus==2.0.*", "celery[redis]>=5.5,<6"]]
                )
                theirs = [str(ce_python), "-c", "from src.cli import cli; cli()", "--broker-url", server.url]
                targets.append(
                    Target(ce_name, [*theirs, "--host", "127.0.0.1"], free_port(), env, "queue_name")
                )
                crp = [str(crp_python), "-m", "celery", "-A", "benchapp", "prometheus", "--queue-length"]
                targets.append(
                    Target(
                        "celery-redis-prometheus", [*crp, "--host", "127.0.0.1"], free_port(), env, "queue"
                    )
                )
            for target in targets:
                target.argv += ["--port", str(target.port)]
                target.process = ManagedProcess(target.name, target.argv, env=target.env, cwd=tmp, sink=log)
                target.process.start()
                processes.append(target.process)
            for target in targets:
                proc = target.process
                assert proc is not None

                def answers(t: Target = target, p: ManagedProcess = proc) -> bool:
                    if p.returncode() is not None:
                        raise RuntimeError(f"{t.name} exited: see {tmp / 'processes.log'}")
                    scrape(t)
                    return True

                wait_until(answers, timeout=120, interval=0.5, what=f"{target.name} to answer /metrics")
                for _ in range(3):  # warm up
                    scrape(target)

            # celery-fleet and the baseline alternate, scrape by scrape; then the others one at a
            # time, so the CPU their scrapes cost (in the exporter and, through broadcast
            # inspect, in the workers) is their own.
            workers = [psutil.Process(p.pid) for p in processes if p.name.startswith("worker")]
            rounds = [targets[:2], *([t] for t in targets[2:])]
            for group in rounds:
                before = {t.name: cpu_seconds([psutil.Process(t.process.pid)]) for t in group if t.process}
                workers_cpu = cpu_seconds(workers)
                began = time.monotonic()
                while len(group[0].timings) < args.scrapes:
                    if len(group) == 1 and time.monotonic() - began > args.budget:
                        break
                    for target in group:
                        target.timings.append(scrape(target))
                for target in group:
                    assert target.process is not None
                    scrapes = max(1, len(target.timings))
                    target.exporter_cpu_ms = (
                        (cpu_seconds([psutil.Process(target.process.pid)]) - before[target.name])
                        * 1000
                        / scrapes
                    )
                    target.workers_cpu_ms = (cpu_seconds(workers) - workers_cpu) * 1000 / scrapes / len(group)
                    target.load = os.getloadavg()[0]
            print()
            print(
                f"{args.queues} queues x {len(PRIORITIES)} priorities, {truth:,} messages "
                f"({waiting_truth:,} waiting + {held} held by {args.workers} connected workers)"
            )
            header = f"{'exporter':<24}{'scrapes':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
            header += f"{'CPU ms/scrape':>15}{'workers CPU':>13}{'load':>6}  reported waiting"
            print(header)
            print("-" * len(header))
            for t in targets:
                ms = [x * 1000 for x in t.timings]
                reported = "-" if t.reported is None else f"{t.reported:,.0f}"
                print(
                    f"{t.name:<24}{len(ms):>8}{percentile(ms, 0.5):>9.1f}{percentile(ms, 0.99):>9.1f}"
                    f"{max(ms):>9.1f}{t.exporter_cpu_ms:>15.1f}{t.workers_cpu_ms:>13.1f}{t.load:>6.1f}"
                    f"  {reported}"
                )
            print(f"{'(truth)':<24}{'':>69}  {waiting_truth:,} waiting, {waiting_truth + held:,} backlog")
            print(
                "CPU ms/scrape: the exporter's CPU time per scrape; workers CPU: the workers' CPU per scrape"
            )
            print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
            print_goals(targets)
            if args.plot:
                plot(targets, args.plot, truth)
            summary = {
                t.name: {
                    "p50_ms": percentile([x * 1000 for x in t.timings], 0.5),
                    "p99_ms": percentile([x * 1000 for x in t.timings], 0.99),
                    "scrapes": len(t.timings),
                    "exporter_cpu_ms_per_scrape": t.exporter_cpu_ms,
                    "workers_cpu_ms_per_scrape": t.workers_cpu_ms,
                    "load_average": t.load,
                    "reported_waiting": t.reported,
                }
                for t in targets
            }
            OUT_DIR.mkdir(exist_ok=True)
            report = {"messages": truth, "held": held, "queues": args.queues, "results": summary}
            (OUT_DIR / "exporter.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        finally:
            for process in reversed(processes):
                process.stop(timeout=15)
            server.stop()


def print_goals(targets: list[Target]) -> None:
    by_name = {t.name: t for t in targets}
    ours, bare = by_name["celery-fleet"], by_name[BASELINE]
    ratio = percentile(ours.timings, 0.99) / percentile(bare.timings, 0.99)
    verdict = "meets" if ratio <= P99_GOAL else "misses"
    print(f"goal: celery-fleet p99 <= {P99_GOAL}x the bare LLEN collector's: {ratio:.2f}x, {verdict}")
    for name, target in by_name.items():
        if name.startswith("celery-exporter") and target.timings:
            speedup = statistics.median(target.timings) / statistics.median(ours.timings)
            verdict = "meets" if speedup >= SPEEDUP_GOAL else "misses"
            print(f"goal: celery-fleet >= {SPEEDUP_GOAL:.0f}x faster than {name}: {speedup:,.0f}x, {verdict}")


def plot(targets: list[Target], name: str, truth: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(name)
    if path.parent == Path("."):
        path = OUT_DIR / path
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    names = [t.name for t in targets]
    p50 = [percentile([x * 1000 for x in t.timings], 0.5) for t in targets]
    p99 = [percentile([x * 1000 for x in t.timings], 0.99) for t in targets]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], p99, width=0.4, label="p99")
    ax.set_xticks(list(xs), names)
    ax.set_yscale("log")
    ax.set_ylabel("scrape time (ms, log scale)")
    ax.set_title(f"/metrics scrape time, {truth:,} queued messages")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
