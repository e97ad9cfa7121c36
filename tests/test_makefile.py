"""The Makefile's user-facing side: `make help` lists every target, `make up` installs the runtime only."""

from __future__ import annotations

import re
import subprocess

from tests.support.fleet import REPO

TARGET = re.compile(r"^([a-zA-Z0-9_.-]+)\s*:(?!=)", re.MULTILINE)


def make(*args: str) -> str:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def test_make_help_lists_every_target_with_one_line() -> None:
    sources = [REPO / "Makefile", *sorted((REPO / "mk").glob("*.mk"))]
    targets = {
        name for path in sources for name in TARGET.findall(path.read_text()) if not name.startswith(".")
    }
    assert {"up", "test", "check", "help", "superuser"} <= targets
    listed = {}
    for line in make("help").splitlines():
        words = line.split(maxsplit=2)
        assert len(words) == 3, f"a target without its line: {line!r}"
        assert words[0] == "make"
        listed[words[1]] = words[2]
    assert targets <= set(listed), f"missing from `make help`: {sorted(targets - set(listed))}"
    assert make() == make("help")  # `make` alone says what there is


def test_make_up_installs_the_runtime_only() -> None:
    # -n: print the commands, -B: as if nothing were installed yet.
    plan = make("-n", "-B", "up", "VENV=/nonexistent-venv")
    assert "'.[example]'" in plan
    assert ".[dev]" not in plan
    assert "redis-server" in plan
    for test_only in ("postgresql", "prometheus", "chromium", "rabbitmq-server", "docker.io"):
        assert test_only not in plan
    assert 'CELERY_FLEET_SUPERUSER_HINT="make superuser"' in plan  # the hint `up` prints names it
    assert "celery-fleet manage createsuperuser" in make("-n", "-B", "superuser", "VENV=/nonexistent-venv")
    full = make("-n", "-B", "test", "VENV=/nonexistent-venv")
    assert "'.[dev]'" in full
    assert "postgresql" in full
