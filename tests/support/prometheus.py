"""A real Prometheus (Debian ``prometheus``) on a free port with its own config and TSDB in a tmp folder."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import yaml

from celery_fleet.local.waiting import free_port, wait_until

INSTALL_HINT = "prometheus is not installed: run `sudo apt-get install -y prometheus` (or `make system-deps`)"


def binary(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        raise FileNotFoundError(INSTALL_HINT)
    return found


@dataclass
class PrometheusServer:
    data_dir: Path
    targets: dict[str, str]  # job name -> host:port
    rule_files: Sequence[Path] = ()
    scrape_interval: str = "1s"
    #: Labels every target gets, as service discovery gives them (``namespace``, ``cluster``).
    target_labels: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: Instant queries are evaluated at this time when set (``None``: now).
    evaluation_time: float | None = None
    #: The address it listens on (the e2e suite's pods reach it on the node's bridge).
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def config(self) -> dict[str, Any]:
        """The configuration file's content: static targets (subclasses discover theirs)."""
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "scrape_timeout": "900ms",
                    "static_configs": [{"targets": [target], "labels": dict(self.target_labels)}],
                }
                for job, target in self.targets.items()
            ],
        }

    def write_config(self) -> Path:
        path = self.data_dir / "prometheus.yml"
        path.write_text(yaml.safe_dump(self.config()), encoding="utf-8")
        return path

    def start(self, timeout: float = 60) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        log = (self.data_dir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                f"--web.listen-address={self.host}:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self._ready, timeout=timeout, interval=0.25, what=f"prometheus on {self.port} to be ready")
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.process.returncode}: {self.log()[-2000:]}")
        return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200

    def log(self) -> str:
        path = self.data_dir / "prometheus.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; raises with Prometheus's error text on a bad expression."""
        params: dict[str, Any] = {"query": expr}
        if self.evaluation_time is not None:
            params["time"] = self.evaluation_time
        response = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"query failed: {body.get('errorType')}: {body.get('error')}\n{expr}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The one value of an expression that selects one series (None if it selects none)."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, f"{expr} selects {len(result)} series: {result}"
        return float(result[0]["value"][1])

    @contextmanager
    def at_last_scrape(self, job: str) -> Iterator[float]:
        """Evaluate at the job's last scrape: no extrapolation past the newest samples."""
        stamp = self.value(f'timestamp(up{{job="{job}"}})')
        assert stamp is not None, f"no scrape of {job} yet"
        self.evaluation_time = stamp
        try:
            yield stamp
        finally:
            self.evaluation_time = None

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        """Grafana's ``label_values(match, label)``: the label's values on series matching ``match``."""
        params: dict[str, Any] = {"start": time.time() - 3600}
        if match:
            params["match[]"] = match
        response = httpx.get(f"{self.url}/api/v1/label/{label}/values", params=params, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"label values failed: {body.get('error')}: {label} {match}")
        return sorted(str(v) for v in body["data"])

    def targets_up(self) -> bool:
        body = httpx.get(f"{self.url}/api/v1/targets", timeout=5).json()
        active = body["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)


_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)\s*(?!bool\b)(?=[-+]?[\d.])")


def comparisons_as_bool(expr: str) -> str:
    """``x > 5`` -> ``x > bool 5``: every series the condition looks at is returned (as 0 or 1)."""
    return _COMPARISON.sub(r"\1 bool ", expr)
