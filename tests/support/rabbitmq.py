"""A real RabbitMQ (Debian ``rabbitmq-server``) of a test's own: free ports, node name, data and cookie."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from celery_fleet.local.waiting import free_port, port_open, wait_until

SBIN = Path("/usr/lib/rabbitmq/bin")
INSTALL_HINT = "rabbitmq-server is not installed: run `sudo apt-get install -y rabbitmq-server`"


def rabbitmq_binary(name: str) -> str:
    for candidate in (SBIN / name, Path("/usr/sbin") / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(INSTALL_HINT)
    return found


def skip_unless_installed() -> None:
    """Skip the calling test when Debian's rabbitmq-server is not installed (``make test`` installs it)."""
    import pytest

    try:
        rabbitmq_binary("rabbitmq-server")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@dataclass
class RabbitMQServer:
    data_dir: Path
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    epmd_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: Fixed at creation: a node restarted on other ports keeps its name, and so its data.
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"fleettest{self.port}"

    @property
    def node(self) -> str:
        return f"{self.name}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def env(self) -> dict[str, str]:
        d = self.data_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(d),  # the Erlang cookie lives in $HOME
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_LOGS="-",
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
        )
        return env

    def start(self, timeout: float = 120) -> RabbitMQServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "enabled_plugins").write_text("[].\n", encoding="ascii")
        # guest may connect from 127.0.0.1 (the default already allows loopback only).
        (self.data_dir / "rabbitmq.conf").write_text("loopback_users.guest = false\n", encoding="ascii")
        log = (self.data_dir / "server.log").open("wb")
        self.process = subprocess.Popen(
            [rabbitmq_binary("rabbitmq-server")],
            env=self.env(),
            cwd=self.data_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self._up, timeout=timeout, interval=0.5, what=f"rabbitmq on port {self.port}")
        return self

    def _up(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"rabbitmq-server exited with {self.process.returncode}: {self.log()[-3000:]}")
        return port_open("127.0.0.1", self.port) and "Server startup complete" in self.log()

    def log(self) -> str:
        path = self.data_dir / "server.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def stop(self) -> None:
        env = self.env()
        if self.process is not None and self.process.poll() is None:
            subprocess.run(
                [rabbitmq_binary("rabbitmqctl"), "stop"],
                env=env,
                capture_output=True,
                timeout=60,
                check=False,
            )
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # Our own epmd (on our own port) outlives the node; stop it too.
        epmd = shutil.which("epmd") or next(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"), None)
        if epmd is not None:
            subprocess.run([str(epmd), "-kill"], env=env, capture_output=True, timeout=10, check=False)
