"""Child processes with prefixed, streamed output and graceful stops.

Why not honcho or circus: the fleet starts and stops workers one at a time while it
runs (autoscaling) and must pick *which* worker to stop (an idle one, after a drain);
honcho's manager is fixed at start and circus picks the process for you.  What is left
is small: Popen, a thread that prefixes each output line, and signal-then-wait.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LineSink = Callable[[str, str], None]

#: The name the fleet's own lines carry (its processes' lines carry theirs).
FLEET = "celery-fleet"

_print_lock = threading.Lock()
_COLOURS = (36, 33, 35, 32, 34, 91, 92, 93, 94, 95, 96)


def console_sink(stream: IO[str] | None = None, colour: bool | None = None) -> LineSink:
    """Print ``name | line`` like foreman/honcho, coloured per name on a terminal."""
    out = stream or sys.stdout
    use_colour = out.isatty() if colour is None else colour
    colours: dict[str, int] = {}

    def sink(name: str, line: str) -> None:
        prefix = f"{name:<14}|"
        if use_colour:
            code = colours.setdefault(name, _COLOURS[len(colours) % len(_COLOURS)])
            prefix = f"\x1b[{code}m{prefix}\x1b[0m"
        with _print_lock:
            out.write(f"{prefix} {line}\n")
            out.flush()

    return sink


@dataclass
class RestartBackoff:
    """When to start again what died on its own: at once after a long run; after a growing delay
    (1, 2, 4 ... 30 s) while it keeps dying soon after its start, so that a web tier that cannot
    bind or a worker whose project does not import does not restart in a tight loop."""

    quick_exit_seconds: float = 10.0
    delays: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
    quick_exits: int = 0

    def delay_after(self, ran: float) -> float:
        """Seconds to wait before the next start, for a process that ran ``ran`` seconds."""
        self.quick_exits = self.quick_exits + 1 if ran < self.quick_exit_seconds else 0
        return self.delays[min(self.quick_exits, len(self.delays)) - 1] if self.quick_exits else 0.0


def describe_exit(code: int | None) -> str:
    """``exited with code 1``, ``was killed by SIGKILL``: how a process ended, in words."""
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def file_sink(path: Path) -> LineSink:
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a", encoding="utf-8", buffering=1)

    def sink(name: str, line: str) -> None:
        with _print_lock:
            fh.write(f"{time.time():.3f} {name} | {line}\n")

    return sink


class ManagedProcess:
    """One child process; its output goes line by line to ``sink`` with its name."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        sink: LineSink | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.sink = sink or console_sink()
        self.popen: subprocess.Popen[str] | None = None
        self.started_at = 0.0
        self._pump: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def start(self) -> ManagedProcess:
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            # Own session and process group: a terminal's Ctrl-C goes to the whole foreground
            # group, and must reach only the supervisor, which then stops each child the
            # graceful way, in order (workers drain while the broker is still there).
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        self._pump = threading.Thread(target=self._pump_output, name=f"pump-{self.name}", daemon=True)
        self._pump.start()
        return self

    def _pump_output(self) -> None:
        assert self.popen is not None
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.sink(self.name, line.rstrip("\n"))

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def send(self, sig: int) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the exit and the last lines of output; the exit status, or None on timeout."""
        if self.popen is None:
            return None
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        if self._pump is not None:
            self._pump.join(timeout=5)
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> float:
        """Send ``sig``, wait up to ``timeout`` for a clean exit, then SIGKILL; return seconds taken."""
        began = time.monotonic()
        if not self.alive():
            return 0.0
        self.send(sig)
        if self.wait(timeout) is None:
            self.sink(self.name, f"did not exit {timeout:.0f}s after {signal.Signals(sig).name}: SIGKILL")
            self.send(signal.SIGKILL)
            self.wait(10)
        return time.monotonic() - began
