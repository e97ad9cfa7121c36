"""Helpers shared by the bench scripts: output folder, machine load, a real Redis, plots."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from celery_fleet.local.redis_server import RedisServer
from celery_fleet.local.waiting import free_port

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
#: The bundled example project the benchmarks run (beside the library, not installed).
EXAMPLE_DIR = REPO / "example"
if str(EXAMPLE_DIR) not in sys.path:
    sys.path.append(str(EXAMPLE_DIR))


def output_path(value: str | None, default_name: str) -> Path | None:
    """``--plot``: a bare file name lands in bench/out/, a path with a folder is used as given."""
    if value is None:
        return None
    path = Path(value or default_name)
    if path.parent == Path("."):
        path = OUT_DIR / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs ({platform.node()})"


def child_env(**extra: str) -> dict[str, str]:
    """The environment of the processes a bench starts: ours minus Celery/Django/DB settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_", "DATABASE_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(BENCH_DIR), str(EXAMPLE_DIR), env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


@contextmanager
def redis_server(data_dir: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free port, configured as the fleet runs it (AOF, fsync every second)."""
    server = RedisServer(data_dir=data_dir / "redis", port=free_port()).start()
    try:
        yield server
    finally:
        server.stop()


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process, its live descendants and the children it reaped."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:  # exited between listing and reading: counted once reaped
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total
