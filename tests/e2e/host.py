"""Processes the e2e suite runs on the host, next to the kwok cluster.

The cluster's pods are fake (kwok), so everything that must really run runs here: the broker
(redis-server, the session fixture of tests/conftest.py), ``celery-fleet exporter`` reading
it, Prometheus scraping the exporter, the External metrics API (prometheus-adapter or KEDA's
metrics server) that kube-apiserver's aggregator proxies to, and KEDA's operator.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from celery_fleet.headers import PUBLISHED_AT_HEADER
from celery_fleet.local.processes import ManagedProcess, file_sink
from celery_fleet.local.waiting import free_port, port_open, wait_until
from tests.e2e.kube import REPO, Kube
from tests.support.prometheus import PrometheusServer

CACHE = Path(os.environ.get("CELERY_FLEET_CACHE") or REPO / ".cache")
#: The rules the project ships for prometheus-adapter (the same as k8s/prometheus-adapter/values.yaml).
ADAPTER_RULES = REPO / "k8s" / "prometheus-adapter" / "rules.yaml"
EXTERNAL_METRICS_GROUP = "external.metrics.k8s.io"
APISERVICE = f"v1beta1.{EXTERNAL_METRICS_GROUP}"
METRICS_NAMESPACE = "celery-fleet-e2e-metrics"


def tool(name: str) -> Path:
    """A binary built by tests/cluster/build-autoscalers.sh (its path from ``... path NAME``)."""
    out = subprocess.run(
        [str(REPO / "tests" / "cluster" / "build-autoscalers.sh"), "path", name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(out)


def host_ip() -> str:
    """The host's address the API server reaches it by (Endpoints refuse loopback addresses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        return str(sock.getsockname()[0])


def celery_fleet_cli() -> str:
    return str(Path(sys.executable).parent / "celery-fleet")


def _raise_if_dead(process: ManagedProcess, log: Path) -> bool:
    code = process.returncode()
    if code is not None:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(f"{process.name} exited with {code}:\n{tail}")
    return False


@dataclass
class Exporter:
    """``celery-fleet exporter`` on the host, reading the test broker."""

    broker_url: str
    log: Path
    queues: str = "default,exports,periodic"
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Exporter:
        argv = [
            celery_fleet_cli(),
            "exporter",
            "--broker-url",
            self.broker_url,
            "--queues",
            self.queues,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self.process = ManagedProcess("exporter", argv, sink=file_sink(self.log)).start()
        wait_until(
            lambda: (
                _raise_if_dead(self.process, self.log)  # type: ignore[arg-type]
                or httpx.get(f"http://{self.target}/metrics", timeout=2).status_code == 200
            ),
            timeout=30,
            what="the exporter to serve /metrics",
        )
        return self

    def backlog(self, queue: str) -> float | None:
        text = httpx.get(f"http://{self.target}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(f'celery_fleet_queue_backlog{{queue_name="{queue}"}}'):
                return float(line.rsplit(" ", 1)[1])
        return None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=15)


@dataclass
class LabelledPrometheus(PrometheusServer):
    """Prometheus whose scraped series carry ``labels`` (e.g. the namespace, as in a cluster)."""

    labels: Mapping[str, str] = field(default_factory=dict)

    def write_config(self) -> Path:
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [
                {
                    "job_name": job,
                    "scrape_timeout": "900ms",
                    "static_configs": [{"targets": [target], "labels": dict(self.labels)}],
                }
                for job, target in self.targets.items()
            ],
        }
        path = self.data_dir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path


def external_metrics_backend(kube: Kube, port: int, *, backend: str) -> None:
    """Point the ``external.metrics.k8s.io`` APIService at a server on this host's ``port``.

    A selectorless Service whose Endpoints are the host address: kube-apiserver runs with
    ``--enable-aggregator-routing=true``, so its aggregator dials the endpoint itself (there is
    no kube-proxy). The server's certificate is self-signed, hence ``insecureSkipTLSVerify``.
    """
    ip = host_ip()
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": METRICS_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "external-metrics", "namespace": METRICS_NAMESPACE},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port, "protocol": "TCP"}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {
                "name": "external-metrics",
                "namespace": METRICS_NAMESPACE,
                "labels": {"celery-fleet-e2e/backend": backend},
            },
            "subsets": [
                {"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}
            ],
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": APISERVICE, "labels": {"celery-fleet-e2e/backend": backend}},
            "spec": {
                "group": EXTERNAL_METRICS_GROUP,
                "version": "v1beta1",
                "service": {"namespace": METRICS_NAMESPACE, "name": "external-metrics", "port": 443},
                "insecureSkipTLSVerify": True,
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]
    kube.apply(objects)
    kube.kubectl(
        "wait", f"apiservice/{APISERVICE}", "--for=condition=Available", "--timeout=90s", timeout=100
    )


def remove_external_metrics_backend(kube: Kube) -> None:
    """Drop the APIService: one left pointing at a stopped server makes API discovery fail
    (``kubectl api-resources`` exits 1) for every later test."""
    kube.kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found", check=False)


def _kubeconfig_flags(kubeconfig: str, names: Sequence[str]) -> list[str]:
    return [f"--{n}={kubeconfig}" for n in names]


@dataclass
class PrometheusAdapter:
    """sigs.k8s.io/prometheus-adapter on the host: the External metrics API for the HPA path."""

    kube: Kube
    prometheus_url: str
    work_dir: Path
    port: int = field(default_factory=lambda: free_port("0.0.0.0"))
    process: ManagedProcess | None = None

    def start(self) -> PrometheusAdapter:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log = self.work_dir / "prometheus-adapter.log"
        argv = [
            str(tool("prometheus-adapter")),
            f"--prometheus-url={self.prometheus_url}",
            f"--config={ADAPTER_RULES}",
            "--metrics-relist-interval=5s",
            f"--secure-port={self.port}",
            f"--cert-dir={self.work_dir / 'certs'}",
            *_kubeconfig_flags(
                self.kube.kubeconfig,
                ["lister-kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig"],
            ),
            "--v=2",
        ]
        self.process = ManagedProcess("prometheus-adapter", argv, sink=file_sink(log)).start()
        wait_until(
            lambda: _raise_if_dead(self.process, log) or port_open("127.0.0.1", self.port),  # type: ignore[arg-type]
            timeout=60,
            what="prometheus-adapter to listen",
        )
        external_metrics_backend(self.kube, self.port, backend="prometheus-adapter")
        return self

    def stop(self) -> None:
        remove_external_metrics_backend(self.kube)
        if self.process is not None:
            self.process.stop(timeout=15)


def external_metric(kube: Kube, namespace: str, metric: str, selector: str = "") -> list[dict[str, Any]]:
    """GET the External metrics API through kube-apiserver (what the HPA controller reads)."""
    path = f"/apis/{EXTERNAL_METRICS_GROUP}/v1beta1/namespaces/{namespace}/{metric}"
    if selector:
        path += "?" + urllib.parse.urlencode({"labelSelector": selector})
    body = json.loads(kube.kubectl("get", "--raw", path))
    return list(body.get("items", []))


def quantity(text: str) -> float:
    """A Kubernetes quantity as the metrics APIs print them (``45``, ``500m``, ``1500m``)."""
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def enqueue(broker_url: str, queue: str, count: int, task: str = "jobs.tasks.noop") -> None:
    """Publish ``count`` real Celery messages for ``task`` onto ``queue`` (no worker needed)."""
    from celery import Celery

    app = Celery("e2e-publisher", broker=broker_url, set_as_current=False)
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            app.send_task(task, queue=queue, producer=producer, headers={PUBLISHED_AT_HEADER: time.time()})


def self_signed_ca_and_cert(directory: Path, ip: str) -> Path:
    """``ca.crt``, ``tls.crt``, ``tls.key`` (what KEDA reads from its cert dir): a CA and one
    certificate for both ends of KEDA's gRPC link (server and client auth), valid for this host."""
    directory.mkdir(parents=True, exist_ok=True)

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    ssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=celery-fleet-e2e-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    (directory / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        f"subjectAltName=DNS:localhost,DNS:keda-operator,IP:127.0.0.1,IP:{ip}\n",
        encoding="utf-8",
    )
    ssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=keda-operator",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
    )
    ssl(
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "tls.crt",
    )
    return directory


@dataclass
class Keda:
    """KEDA's operator and metrics API server on the host, against the cluster's kubeconfig.

    As in KEDA's own manifests: both share one cert dir (the operator serves gRPC on it, the
    metrics server is its client and serves HTTPS with it); the operator watches every
    namespace; certificate rotation and webhook/APIService patching are off (the suite owns
    the APIService, see ``external_metrics_backend``)."""

    kube: Kube
    work_dir: Path
    port: int = field(default_factory=lambda: free_port("0.0.0.0"))
    grpc_port: int = field(default_factory=free_port)
    processes: list[ManagedProcess] = field(default_factory=list)

    def start(self) -> Keda:
        certs = self_signed_ca_and_cert(self.work_dir / "certs", host_ip())
        log = self.work_dir / "keda.log"
        self.kube.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "keda"}}])
        env = {
            **os.environ,
            "KUBECONFIG": self.kube.kubeconfig,
            "WATCH_NAMESPACE": "",
            "POD_NAMESPACE": "keda",
            "KEDA_CLUSTER_OBJECT_NAMESPACE": "keda",
            "KEDA_HTTP_DEFAULT_TIMEOUT": "3000",
        }
        operator = ManagedProcess(
            "keda-operator",
            [
                str(tool("keda-operator")),
                f"--cert-dir={certs}",
                "--enable-cert-rotation=false",
                "--enable-webhook-patching=false",
                "--enable-apiservice-patching=false",
                f"--metrics-service-bind-address=127.0.0.1:{self.grpc_port}",
                f"--metrics-bind-address=127.0.0.1:{free_port()}",
                f"--health-probe-bind-address=127.0.0.1:{free_port()}",
                f"--ca-dir={certs}",
                "--zap-log-level=info",
            ],
            env=env,
            sink=file_sink(log),
        ).start()
        self.processes.append(operator)
        wait_until(
            lambda: _raise_if_dead(operator, log) or port_open("127.0.0.1", self.grpc_port),
            timeout=90,
            what="the KEDA operator's gRPC metrics service",
        )
        adapter = ManagedProcess(
            "keda-adapter",
            [
                str(tool("keda-adapter")),
                f"--secure-port={self.port}",
                f"--cert-dir={certs}",
                f"--tls-cert-file={certs / 'tls.crt'}",
                f"--tls-private-key-file={certs / 'tls.key'}",
                f"--metrics-service-address=127.0.0.1:{self.grpc_port}",
                "--metrics-service-grpc-authority=localhost",
                f"--port={free_port()}",
                *_kubeconfig_flags(
                    self.kube.kubeconfig,
                    ["lister-kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig"],
                ),
                "--v=2",
            ],
            env=env,
            sink=file_sink(log),
        ).start()
        self.processes.append(adapter)
        wait_until(
            lambda: _raise_if_dead(adapter, log) or port_open("127.0.0.1", self.port),
            timeout=90,
            what="KEDA's metrics API server to listen",
        )
        external_metrics_backend(self.kube, self.port, backend="keda")
        return self

    def stop(self) -> None:
        # ScaledObjects carry KEDA's finalizer: delete them while the operator still runs, or
        # every later uninstall/namespace deletion waits for a finalizer nobody removes.
        self.kube.kubectl(
            "delete",
            "scaledobjects.keda.sh",
            "--all",
            "--all-namespaces",
            "--timeout=60s",
            timeout=90,
            check=False,
        )
        remove_external_metrics_backend(self.kube)
        for process in reversed(self.processes):
            process.stop(timeout=15)
