"""A local ``redis-server`` with its data (append-only file) in a folder of ours."""

from __future__ import annotations

import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from celery_fleet.local.processes import LineSink
from celery_fleet.local.waiting import wait_until

INSTALL_HINT = (
    "redis-server is not installed: run `sudo apt-get install -y redis-server` (or `make up`, which does)"
)


def redis_server_binary() -> str:
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        raise FileNotFoundError(INSTALL_HINT)
    return binary


@dataclass
class RedisServer:
    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    appendonly: bool = True
    #: Where redis-server's own log lines go (``None``: nowhere), at its ``--loglevel``.
    sink: LineSink | None = field(default=None, repr=False)
    loglevel: str = "notice"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        return [
            redis_server_binary(),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            # AOF: queued messages and unacked tasks survive a restart of the broker.
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--logfile",
            "",
            "--loglevel",
            self.loglevel,
        ]

    def start(self, *, timeout: float = 15) -> RedisServer:
        import redis

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if self.sink is None else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Own session: a terminal's Ctrl-C reaches the whole foreground process group, and
            # the broker must outlive the workers' drain; whoever started it stops it, last.
            start_new_session=True,
        )
        if self.sink is not None:
            threading.Thread(target=self._pump, args=(self.process,), name="pump-redis", daemon=True).start()
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        try:
            wait_until(lambda: self._alive() and client.ping(), timeout=timeout, what=f"redis on {self.port}")
        finally:
            client.close()
        return self

    def _pump(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        assert self.sink is not None
        for raw in process.stdout:
            self.sink("redis", raw.decode("utf-8", "replace").rstrip("\n"))

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        return True

    def returncode(self) -> int | None:
        """``None`` while it runs (or before it started); its exit status once it ended."""
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = 10) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # redis flushes the AOF on SIGTERM
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()
