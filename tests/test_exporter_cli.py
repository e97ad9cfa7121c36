"""``celery-fleet exporter`` at the edge: bad input fails clearly; a dead broker is not reported as empty."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from click.testing import CliRunner

from celery_fleet.cli import main
from celery_fleet.local.processes import ManagedProcess, file_sink
from celery_fleet.local.redis_server import RedisServer
from celery_fleet.local.waiting import free_port, wait_until


def test_bad_options_are_refused_with_the_reason() -> None:
    runner = CliRunner()
    no_queues = runner.invoke(main, ["exporter", "--queues", " , "])
    assert no_queues.exit_code == 2
    assert "give at least one queue name" in no_queues.output
    sentinel = runner.invoke(main, ["exporter", "--broker-url", "sentinel://localhost:26379"])
    assert sentinel.exit_code == 2
    assert "'sentinel' brokers are not supported" in sentinel.output
    port = runner.invoke(main, ["exporter", "--port", "70000"])
    assert port.exit_code == 2
    assert "70000" in port.output
    metrics = runner.invoke(main, ["exporter", "--metrics-url", "amqp://localhost"])
    assert metrics.exit_code == 2
    assert "task totals live in Redis" in metrics.output


def test_options_come_from_the_environment() -> None:
    result = CliRunner().invoke(
        main, ["exporter", "--help"], env={"CELERY_FLEET_EXPORTER_PORT": "9999", "CELERY_FLEET_QUEUES": "a,b"}
    )
    assert result.exit_code == 0
    bad = CliRunner().invoke(main, ["exporter"], env={"CELERY_FLEET_QUEUES": ","})
    assert bad.exit_code == 2
    assert "give at least one queue name" in bad.output


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "celery_fleet.cli", "exporter", "--no-events", "--host", "127.0.0.1",
             "--port", str(port), "--broker-url", "redis://127.0.0.1:1/0"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_unreachable_broker_leaves_queue_series_out(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens here
    port = free_port()
    exporter = ManagedProcess(
        "exporter",
        [sys.executable, "-m", "celery_fleet.cli", "exporter", "--host", "127.0.0.1", "--port", str(port),
         "--broker-url", f"redis://127.0.0.1:{dead}/0"],
        sink=file_sink(tmp_path / "exporter.log"),
    ).start()  # fmt: skip
    try:
        text = wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=20).text,
            timeout=60,
            what="the exporter to answer",
        )
        assert "celery_fleet_broker_up 0.0" in text
        assert "celery_queue_length{" not in text
        assert "celery_fleet_queue_backlog{" not in text
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=20).json()
        assert health["broker_error"]
        assert health["events_connected"] is False
    finally:
        exporter.stop(timeout=20)


def test_a_hung_broker_is_reported_down_within_two_seconds(tmp_path: Path) -> None:
    """SIGSTOP: the broker's socket accepts and never answers; Prometheus must still get a scrape."""
    broker = RedisServer(data_dir=tmp_path / "redis", port=free_port(), appendonly=False).start()
    port = free_port()
    exporter = ManagedProcess(
        "exporter",
        [sys.executable, "-m", "celery_fleet.cli", "exporter", "--host", "127.0.0.1", "--port", str(port),
         "--broker-url", broker.url, "--queues", "default"],
        sink=file_sink(tmp_path / "exporter.log"),
    ).start()  # fmt: skip
    assert broker.process is not None
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_until(lambda: "celery_fleet_broker_up 1.0" in httpx.get(url, timeout=20).text, timeout=60)
        os.kill(broker.process.pid, signal.SIGSTOP)
        took = []
        for _ in range(3):
            began = time.monotonic()
            text = httpx.get(url, timeout=10).text
            took.append(time.monotonic() - began)
            assert "celery_fleet_broker_up 0.0" in text
            assert 'celery_queue_length{queue_name="default"}' not in text  # no false 0 backlog
        print(f"scrapes with the broker hung took {took} s")
        assert max(took) < 2.0, f"scrapes took {took} with the broker hung (load {os.getloadavg()})"
        os.kill(broker.process.pid, signal.SIGCONT)
        wait_until(lambda: "celery_fleet_broker_up 1.0" in httpx.get(url, timeout=20).text, timeout=30)
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)
        exporter.stop(timeout=20)
        broker.stop()
