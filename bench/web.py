"""POST-to-202 latency and requests/s of the job API against bare Django views, through gunicorn.

    .venv/bin/python bench/web.py [--requests 6000] [--concurrency 8] [--plot web.png]

One gunicorn (the project's real ``python:celery_fleet.gunicorn_conf``: 2 uvicorn ASGI workers
by default) serves the project with ``bench/benchsite`` settings, which only add
baseline views.  Every variant gets the same JSON body and answers the same 202 JSON:

* ``bare``     ``POST /bench/bare``     parse + validate the body, answer; no database, no broker;
* ``insert``   ``POST /bench/insert``   ... + the ``Job`` row (database only);
* ``publish``  ``POST /bench/publish``  ... + the task published as ``submit_job`` does (broker only);
* ``publish-plain`` the same publish without link/link_error/retry policy (what they cost);
* ``enqueue``  ``POST /api/jobs/``      the real API: row, then publish with link/link_error;
* ``textbook`` ``POST /bench/textbook`` ``Job.objects.create`` + ``task.delay()`` on Celery's
  defaults, served by a second gunicorn of the same project without celery-fleet's publish
  hooks (``benchsite/textbook_settings.py``): what a tutorial's view costs.

The goal: ``enqueue`` at <= 1.1x the textbook view's server CPU per request (``bare`` is context).

No worker runs: this measures the enqueue path only.  A real redis-server and a fresh,
migrated SQLite database (or ``--postgres``, or ``--database-url``) live in a temporary
folder.  The load is N requests per variant over C keep-alive connections (one thread each,
``http.client``), split into rounds that alternate the variants, so drift in the machine's
load hits each variant alike.  Figures: requests/s (N / wall time), p50 and p99 of the
POST-to-202 time, and server CPU ms per request (gunicorn, redis-server and a PostgreSQL we
started, from /proc around each round: the figure least moved by other work on the machine).
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from _common import (
    OUT_DIR,
    REPO,
    child_env,
    load_line,
    output_path,
    redis_server,
    scratch_dir,
    tree_cpu_seconds,
)
from celery_fleet import roles
from celery_fleet.local.waiting import free_port, wait_until

VARIANTS = {
    "bare": "/bench/bare",
    "insert": "/bench/insert",
    "publish": "/bench/publish",
    "publish-plain": "/bench/publish-plain",
    "enqueue": "/api/jobs/",
    "textbook": "/bench/textbook",
}
#: Variants served by the textbook gunicorn (Celery as shipped); the others by the project's.
TEXTBOOK = {"textbook"}
BODIES = {
    "export_users": {"kind": "export_users"},
    "random_users": {"kind": "random_users", "total": 100},
}
GOAL = 1.1


@dataclass
class Result:
    variant: str
    latencies: list[float] = field(default_factory=list)  # seconds
    wall: float = 0.0
    rounds: list[float] = field(default_factory=list)  # requests/s of each round
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per server role

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0

    def cpu_ms(self, role: str | None = None) -> float:
        """Server CPU milliseconds per request: one role's, or all of them."""
        seconds = self.cpu.get(role, 0.0) if role else sum(self.cpu.values())
        return seconds * 1000 / len(self.latencies) if self.latencies else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class BadResponse(RuntimeError):
    pass


def run_load(port: int, path: str, body: bytes, requests: int, concurrency: int) -> tuple[list[float], float]:
    """``requests`` POSTs over ``concurrency`` keep-alive connections; (latencies, wall seconds)."""
    headers = {"Content-Type": "application/json", "Host": f"127.0.0.1:{port}"}
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(concurrency)]
    for conn in connections:
        conn.connect()
    per_thread: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    remaining = [requests]
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)

    def client(index: int) -> None:
        conn, out = connections[index], per_thread[index]
        start.wait()
        while not errors:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            began = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - began
            if response.status != 202:
                errors.append(f"{path}: HTTP {response.status}: {payload[:300]!r}")
                return
            out.append(elapsed)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    for conn in connections:
        conn.close()
    if errors:
        raise BadResponse(errors[0])
    return [x for out in per_thread for x in out], wall


def start_web(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**env, "PORT": str(port), "WEB_HOST": "127.0.0.1"}
    # Output straight to a file: a pump thread in this process would compete with the client.
    with log.open("ab") as fh:
        process = subprocess.Popen(
            roles.web_argv("fleetsite.asgi:application"),
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}; see {log}")
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200

    wait_until(up, timeout=60, what="gunicorn to answer /healthz")
    return process, port


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def print_table(results: dict[str, Result], concurrency: int, roles_: list[str]) -> None:
    base = results.get("bare")
    print()
    cpu_heads = "".join(f" {role + ' CPU':>10}" for role in roles_)
    print(
        f"{'variant':<14} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7}{cpu_heads} {'CPU ms':>7}"
        f" {'x bare: req/s':>13} {'p50':>6} {'CPU':>6}   req/s per round"
    )
    for name, result in results.items():
        p50, p99 = result.percentile(50) * 1000, result.percentile(99) * 1000
        cpus = "".join(f" {result.cpu_ms(role):>10.3f}" for role in roles_)
        if base:
            against_bare = (
                f" {base.rps / result.rps:>12.2f}x {result.percentile(50) / base.percentile(50):>5.2f}x"
                f" {result.cpu_ms() / base.cpu_ms():>5.2f}x"
            )
        else:  # bare not among --variants: nothing to compare with
            against_bare = f" {'-':>13} {'-':>6} {'-':>6}"
        rounds = " ".join(f"{r:.0f}" for r in result.rounds)
        print(
            f"{name:<14} {len(result.latencies):>8} {result.rps:>7.0f} {p50:>7.2f} {p99:>7.2f}{cpus}"
            f" {result.cpu_ms():>7.3f}{against_bare}   {rounds}"
        )
    print(
        f"(concurrency {concurrency}; CPU = server CPU ms per request, client excluded; "
        "x bare = bare req/s / variant req/s, variant p50 / bare p50, variant CPU / bare CPU)"
    )
    textbook = results.get("textbook")
    if textbook and "enqueue" in results:
        enqueue = results["enqueue"]
        cpu = enqueue.cpu_ms() / textbook.cpu_ms()
        verdict = "meets" if cpu <= GOAL else "misses"
        slower = textbook.rps / enqueue.rps
        p50 = enqueue.percentile(50) / textbook.percentile(50)
        print(f"goal: enqueue <= {GOAL}x the textbook view's server CPU per request -> {cpu:.2f}x: {verdict}")
        print(
            f"      (textbook req/s / enqueue req/s: {slower:.2f}x; enqueue p50 / textbook p50: {p50:.2f}x)"
        )
        if {"insert", "publish"} <= set(results):
            cpu = {n: r.cpu_ms() for n, r in results.items()}
            print(
                "added server CPU ms per request: "
                f"database (insert - bare) {cpu['insert'] - cpu['bare']:+.3f}, "
                f"broker (publish - bare) {cpu['publish'] - cpu['bare']:+.3f}, "
                f"both (enqueue - bare) {cpu['enqueue'] - cpu['bare']:+.3f}"
            )


def plot(results: dict[str, Result], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    xs = list(range(len(names)))
    fig, (lat, rps, cpu) = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.38
    p50 = [results[n].percentile(50) * 1000 for n in names]
    p99 = [results[n].percentile(99) * 1000 for n in names]
    lat.bar([x - width / 2 for x in xs], p50, width, label="p50")
    lat.bar([x + width / 2 for x in xs], p99, width, label="p99")
    lat.set_ylabel("POST to 202, ms")
    lat.legend()
    rps.bar(xs, [results[n].rps for n in names], color="tab:green")
    rps.set_ylabel("requests/s")
    bottom = [0.0] * len(names)
    for role in sorted(
        {r for result in results.values() for r in result.cpu}, key=["web", "db", "redis"].index
    ):
        values = [results[n].cpu_ms(role) for n in names]
        cpu.bar(xs, values, bottom=bottom, label=role)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    cpu.set_ylabel("server CPU ms per request")
    cpu.legend()
    for ax in (lat, rps, cpu):
        ax.set_xticks(xs, names, rotation=20, ha="right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests", type=int, default=6000, help="measured requests per variant (all rounds)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent keep-alive connections")
    parser.add_argument("--rounds", type=int, default=3, help="rounds alternating the variants")
    parser.add_argument("--warmup", type=int, default=300, help="unmeasured requests per variant first")
    parser.add_argument("--kind", choices=sorted(BODIES), default="export_users")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS)
    )
    db_group = parser.add_mutually_exclusive_group()
    db_group.add_argument(
        "--database-url", help="e.g. postgresql://... (default: fresh SQLite in a temp folder)"
    )
    db_group.add_argument(
        "--postgres",
        action="store_true",
        help="start a throwaway PostgreSQL (tests/support/postgres.py, fsync off)",
    )
    parser.add_argument(
        "--sqlite-conn-max-age",
        type=int,
        help="what-if: keep SQLite connections open this long (the project closes them per request)",
    )
    parser.add_argument(
        "--web-concurrency",
        type=int,
        default=1,
        help="gunicorn workers (WEB_CONCURRENCY; the config's default is 2). One by default: with two, "
        "the kept-alive connections land on one worker in some rounds and split in others, which "
        "moves the CPU per request between rounds",
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=0,
        help="GUNICORN_MAX_REQUESTS (config default 2000; 0 here so worker recycling does not land in p99)",
    )
    parser.add_argument(
        "--plot", nargs="?", const="web.png", help="write a chart (bare name: into bench/out/)"
    )
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(unknown)}")
    if args.requests < args.rounds or args.concurrency < 1 or args.rounds < 1:
        parser.error("need --requests >= --rounds >= 1 and --concurrency >= 1")
    body = json.dumps(BODIES[args.kind]).encode()
    print(f"start: {load_line()}")

    with scratch_dir("bench-web-") as tmp, redis_server(tmp) as redis, database(args) as (db_url, db_pid):
        env = child_env(
            DJANGO_SETTINGS_MODULE="benchsite.settings",
            CELERY_FLEET_DATA_DIR=str(tmp),
            CELERY_BROKER_URL=redis.url,
            DATABASE_URL=db_url or f"sqlite:///{tmp / 'db.sqlite3'}",
            SECRET_KEY="bench-secret-key-not-for-production",
            DEBUG="0",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            GUNICORN_MAX_REQUESTS=str(args.max_requests),
        )
        if args.sqlite_conn_max_age is not None:
            env["BENCH_SQLITE_CONN_MAX_AGE"] = str(args.sqlite_conn_max_age)
        if args.web_concurrency:
            env["WEB_CONCURRENCY"] = str(args.web_concurrency)
        subprocess.run(
            roles.manage_argv("migrate", "--no-input", "-v", "0"), env=env, check=True, timeout=300
        )
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        log = OUT_DIR / "web-gunicorn.log"
        log.write_bytes(b"")
        servers = {"project": start_web(env, log)}
        if TEXTBOOK & set(variants):
            servers["textbook"] = start_web(
                {**env, "DJANGO_SETTINGS_MODULE": "benchsite.textbook_settings"}, log
            )
        assert redis.process is not None
        shared = {"redis": redis.process.pid, **({"db": db_pid} if db_pid is not None else {})}

        def served_by(name: str) -> tuple[int, dict[str, int]]:
            process, port = servers["textbook" if name in TEXTBOOK else "project"]
            return port, {"web": process.pid, **shared}

        pids = served_by(variants[0])[1]
        try:
            for name in variants:  # warm every worker process: imports, DB and broker connections
                run_load(served_by(name)[0], VARIANTS[name], body, args.warmup, args.concurrency)
            results = {name: Result(name) for name in variants}
            per_round = args.requests // args.rounds
            for round_no in range(args.rounds):
                order = variants if round_no % 2 == 0 else variants[::-1]
                for name in order:
                    port, pids = served_by(name)
                    before = {role: tree_cpu_seconds(pid) for role, pid in pids.items()}
                    latencies, wall = run_load(port, VARIANTS[name], body, per_round, args.concurrency)
                    result = results[name]
                    for role, pid in pids.items():
                        result.cpu[role] = result.cpu.get(role, 0.0) + tree_cpu_seconds(pid) - before[role]
                    result.latencies += latencies
                    result.wall += wall
                    result.rounds.append(len(latencies) / wall)
                    print(
                        f"  round {round_no + 1}: {name:<14} {len(latencies) / wall:7.0f} req/s "
                        f"p50 {statistics.median(latencies) * 1000:6.2f} ms",
                        flush=True,
                    )
        finally:
            for process, _ in servers.values():
                stop(process)
        queued, connections = broker_stats(redis.url)
    end_load = load_line()
    print_table(results, args.concurrency, list(pids))
    print(f"messages left on the broker (all publishing variants, warm-up included): {queued}")
    print(f"connections Redis accepted during the run (pooled if small): {connections}")
    print(f"end:   {end_load}")
    db = "PostgreSQL" if args.database_url or args.postgres else "SQLite"
    if args.sqlite_conn_max_age is not None and db == "SQLite":
        db += f" (what-if: CONN_MAX_AGE={args.sqlite_conn_max_age}, the project uses 0)"
    print(f"server: gunicorn python:celery_fleet.gunicorn_conf, {db}, Redis; gunicorn log: {log}")
    plot_path = output_path(args.plot, "web.png")
    if plot_path:
        plot(results, plot_path, f"POST {args.kind}, {args.concurrency} connections - {end_load}")
    return 0


@contextmanager
def database(args: argparse.Namespace) -> Iterator[tuple[str | None, int | None]]:
    """(database URL or None for SQLite, pid of a server we started so its CPU is counted)."""
    if not args.postgres:
        yield args.database_url, None
        return
    sys.path.insert(0, str(REPO))
    from tests.support.postgres import PostgresServer

    server = PostgresServer.start()
    try:
        yield server.url, server.process.pid if server.process else None
    finally:
        server.stop()


def broker_stats(url: str) -> tuple[int, int]:
    """(messages waiting on the job queues, connections Redis accepted since it started)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        queued = sum(int(client.llen(queue)) for queue in ("default", "exports", "celery"))
        return queued, int(client.info("stats")["total_connections_received"])
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
