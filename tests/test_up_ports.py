"""A busy port ends `celery-fleet up` at once, before anything starts, naming the option to change."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celery_fleet.local.waiting import free_port
from tests.support.fleet import EXAMPLE, EXAMPLE_DIR


@pytest.mark.parametrize("taken", ["--port", "--exporter-port", "--redis-port"])
def test_a_taken_port_ends_up_at_once_with_the_option_to_change(tmp_path: Path, taken: str) -> None:
    ports = {"--port": free_port(), "--exporter-port": free_port(), "--redis-port": free_port()}
    with socket.socket() as other:  # another program's server on the port
        other.bind(("127.0.0.1", ports[taken]))
        other.listen()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))}
        env.update(CELERY_FLEET_APP=EXAMPLE.celery_app, PYTHONPATH=str(EXAMPLE_DIR))
        argv = [sys.executable, "-m", "celery_fleet.cli", "up", "--data-dir", str(tmp_path / "data")]
        for name, port in ports.items():
            argv += [name, str(port)]
        began = time.monotonic()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        took = time.monotonic() - began
    assert done.returncode == 1, done.stdout + done.stderr
    message = done.stderr
    assert f"port {ports[taken]}" in message
    assert "in use by another program" in message
    assert f"choose another with {taken}" in message
    # Nothing started: no output from a process, no data folder, and quick about it.
    assert done.stdout == ""
    assert not (tmp_path / "data").exists()
    assert took < 15, f"took {took:.1f}s"


def test_two_roles_on_one_port_are_refused(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))}
    env.update(CELERY_FLEET_APP=EXAMPLE.celery_app, PYTHONPATH=str(EXAMPLE_DIR))
    argv = [sys.executable, "-m", "celery_fleet.cli", "up", "--data-dir", str(tmp_path / "data")]
    argv += ["--port", str(port), "--exporter-port", str(port), "--redis-port", str(free_port())]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"the web tier and the metrics exporter both want port {port}" in done.stderr
    assert not (tmp_path / "data").exists()
