"""Servers the e2e suite runs on this host, beside the cluster (tests/cluster), each one
authenticated as a ServiceAccount with the RBAC its documentation tells users to apply:

* Prometheus, scraping the release's exporter pod over the pod network, found from the chart's
  own ServiceMonitor through the Kubernetes API (``ServiceMonitorDiscovery``);
* prometheus-adapter (the HPA path) with ``k8s/prometheus-adapter/rbac.yaml``;
* KEDA's operator and metrics server with the RBAC of KEDA's own release manifests
  (``build-autoscalers.sh rbac``: config/rbac, config/metrics-server of the KEDA module).

kube-apiserver's aggregator reaches the two metrics servers through a selectorless Service
whose Endpoints are this host's address on the cluster network (via kube-proxy on the node).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from celery_fleet.local.processes import ManagedProcess, file_sink
from celery_fleet.local.waiting import free_port, port_open, wait_until
from tests.e2e.kube import REPO, Kube
from tests.support.prometheus import PrometheusServer

BUILD_AUTOSCALERS = REPO / "tests" / "cluster" / "build-autoscalers.sh"
#: The rules the project ships for prometheus-adapter (the same as k8s/prometheus-adapter/values.yaml).
ADAPTER_RULES = REPO / "k8s" / "prometheus-adapter" / "rules.yaml"
#: What docs/autoscaling.md tells users to apply when they run prometheus-adapter without its chart.
ADAPTER_RBAC = REPO / "k8s" / "prometheus-adapter" / "rbac.yaml"
#: Prometheus's own read access for Kubernetes service discovery (what its chart grants).
PROMETHEUS_RBAC = Path(__file__).parent / "manifests" / "prometheus-rbac.yaml"
EXTERNAL_METRICS_GROUP = "external.metrics.k8s.io"
APISERVICE = f"v1beta1.{EXTERNAL_METRICS_GROUP}"
METRICS_NAMESPACE = "celery-fleet-e2e-metrics"


def autoscalers(*args: str) -> list[str]:
    """``tests/cluster/build-autoscalers.sh ARGS``: binary paths, CRD and RBAC files."""
    out = subprocess.run(
        [str(BUILD_AUTOSCALERS), *args], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    return out.split()


def tool(name: str) -> Path:
    return Path(autoscalers("path", name)[0])


def _raise_if_dead(process: ManagedProcess | None, log: Path) -> bool:
    assert process is not None
    code = process.returncode()
    if code is not None:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(f"{process.name} exited with {code}:\n{tail}")
    return False


def service_account_kubeconfig(kube: Kube, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig with a TokenRequest token of ``namespace/account``: whatever runs with it
    has that ServiceAccount's RBAC and nothing more (never the admin certificate)."""
    admin = yaml.safe_load(Path(kube.kubeconfig).read_text(encoding="utf-8"))
    token = kube.kubectl("-n", namespace, "create", "token", account, "--duration=2h").strip()
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "e2e", "user": account, "namespace": namespace}}],
        "current-context": "sa",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def apply_files(kube: Kube, paths: list[str] | list[Path]) -> None:
    for path in paths:
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))


# ------------------------------------------------------------------ Prometheus


class ServiceMonitorDiscovery:
    """What the Prometheus Operator and Prometheus's Kubernetes service discovery do together
    for a ServiceMonitor, done here because Debian's Prometheus is built without Kubernetes
    discovery (``kubernetes_sd_configs`` is patched out): every second, the Services of the
    monitor's namespace that carry its selector's labels, their EndpointSlices' ready
    endpoints on the named port, written as a ``file_sd`` target list (Prometheus reloads it
    on change) with the labels the operator sets: namespace, service, pod, endpoint, job.
    It reads the API with Prometheus's ServiceAccount token, so Prometheus's RBAC is what
    allows it."""

    def __init__(self, kube: Kube, monitors: list[dict[str, Any]], kubeconfig: Path, directory: Path) -> None:
        self.kube = Kube({**kube.env, "KUBECONFIG": str(kubeconfig)})
        self.monitors = monitors
        self.directory = directory
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def file(self, index: int) -> Path:
        return self.directory / f"servicemonitor-{index}.json"

    def targets(self, monitor: Mapping[str, Any], endpoint: Mapping[str, Any]) -> list[dict[str, Any]]:
        namespace = monitor["metadata"]["namespace"]
        selector = ",".join(
            f"{k}={v}" for k, v in sorted(monitor["spec"]["selector"].get("matchLabels", {}).items())
        )
        groups = []
        for service in self.kube.items("-n", namespace, "services", "-l", selector):
            name = service["metadata"]["name"]
            for eps in self.kube.items(
                "-n", namespace, "endpointslices", "-l", f"kubernetes.io/service-name={name}"
            ):
                ports = [p["port"] for p in eps.get("ports") or [] if p.get("name") == endpoint["port"]]
                for address in eps.get("endpoints") or []:
                    if not (address.get("conditions") or {}).get("ready"):
                        continue
                    for port in ports:
                        groups.append(
                            {
                                "targets": [f"{address['addresses'][0]}:{port}"],
                                "labels": {
                                    "namespace": namespace,
                                    "service": name,
                                    "pod": (address.get("targetRef") or {}).get("name", ""),
                                    "endpoint": endpoint["port"],
                                    "job": name,
                                },
                            }
                        )
        return groups

    def refresh(self) -> None:
        for index, (monitor, endpoint) in enumerate(self.endpoints()):
            text = json.dumps(self.targets(monitor, endpoint), sort_keys=True)
            path = self.file(index)
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(text, encoding="utf-8")
                tmp.replace(path)

    def endpoints(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return [(m, e) for m in self.monitors for e in m["spec"]["endpoints"]]

    def scrape_configs(self) -> list[dict[str, Any]]:
        return [
            {
                "job_name": f"serviceMonitor/{m['metadata']['namespace']}/{m['metadata']['name']}/{i}",
                "honor_labels": bool(e.get("honorLabels", False)),
                "scrape_interval": e.get("interval", "30s"),
                "scrape_timeout": e.get("scrapeTimeout", "900ms"),
                "metrics_path": e.get("path", "/metrics"),
                "file_sd_configs": [{"files": [str(self.file(i))], "refresh_interval": "1s"}],
            }
            for i, (m, e) in enumerate(self.endpoints())
        ]

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.refresh()
            except Exception as exc:  # a busy API server: try again, keep the reason
                self.errors.append(repr(exc))

    def start(self) -> ServiceMonitorDiscovery:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.refresh()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@dataclass
class ClusterPrometheus(PrometheusServer):
    """Debian's Prometheus on this host, scraping what the given ServiceMonitors select."""

    discovery: ServiceMonitorDiscovery | None = None

    def config(self) -> dict[str, Any]:
        assert self.discovery is not None
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": self.discovery.scrape_configs(),
        }

    def stop(self) -> None:
        if self.discovery is not None:
            self.discovery.stop()
        super().stop()

    def active_targets(self) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.url}/api/v1/targets", timeout=5).json()
        return list(body["data"]["activeTargets"])


def start_prometheus(
    kube: Kube, namespace: str, work_dir: Path, *, release: str, port: int | None = None
) -> ClusterPrometheus:
    """Prometheus for one release: its RBAC applied, a token of its ServiceAccount, the
    release's ServiceMonitors read back from the API server (what the operator would watch).
    ``port``: one picked earlier (``free_port(kube.host_address)``), e.g. because the release's
    values already name the server's address."""
    apply_files(kube, [PROMETHEUS_RBAC])
    kubeconfig = service_account_kubeconfig(kube, "monitoring", "prometheus", work_dir / "prometheus-sa.yaml")
    monitors = kube.items(
        "-n",
        namespace,
        "servicemonitors.monitoring.coreos.com",
        "-l",
        f"app.kubernetes.io/instance={release}",
    )
    assert monitors, f"the release {release} has no ServiceMonitor"
    discovery = ServiceMonitorDiscovery(kube, monitors, kubeconfig, work_dir / "prometheus-sd").start()
    server = ClusterPrometheus(
        data_dir=work_dir / "prometheus",
        targets={},
        discovery=discovery,
        host=kube.host_address,
        port=port or free_port(kube.host_address),
    ).start()

    def scraping() -> bool:
        targets = server.active_targets()
        return bool(targets) and all(t["health"] == "up" for t in targets)

    wait_until(
        scraping,
        timeout=60,
        interval=0.5,
        what="Prometheus to scrape the exporter pod via its ServiceMonitor",
    )
    return server


# ------------------------------------------------------------------ External metrics API


def external_metrics_backend(kube: Kube, port: int, *, backend: str) -> None:
    """Point the ``external.metrics.k8s.io`` APIService at a server on this host's ``port``.

    A selectorless Service whose Endpoints are the host's address on the cluster network:
    kube-apiserver's aggregator dials the Service, kube-proxy on the node forwards it here.
    The server's certificate is self-signed, hence ``insecureSkipTLSVerify``.
    """
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
                {
                    "addresses": [{"ip": kube.host_address}],
                    "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
                }
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


def _kubeconfig_flags(kubeconfig: Path) -> list[str]:
    return [
        f"--{n}={kubeconfig}"
        for n in ("lister-kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig")
    ]


@dataclass
class PrometheusAdapter:
    """sigs.k8s.io/prometheus-adapter on this host as ServiceAccount monitoring/prometheus-adapter."""

    kube: Kube
    prometheus_url: str
    work_dir: Path
    port: int = 0
    process: ManagedProcess | None = None

    def start(self) -> PrometheusAdapter:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        apply_files(self.kube, [ADAPTER_RBAC])
        account = yaml.safe_load_all(ADAPTER_RBAC.read_text(encoding="utf-8"))
        sa = next(d for d in account if d and d["kind"] == "ServiceAccount")
        kubeconfig = service_account_kubeconfig(
            self.kube,
            sa["metadata"]["namespace"],
            sa["metadata"]["name"],
            self.work_dir / "sa-kubeconfig.yaml",
        )
        host = self.kube.host_address
        self.port = free_port(host)
        log = self.work_dir / "prometheus-adapter.log"
        argv = [
            str(tool("prometheus-adapter")),
            f"--prometheus-url={self.prometheus_url}",
            f"--config={ADAPTER_RULES}",
            "--metrics-relist-interval=5s",
            f"--bind-address={host}",
            f"--secure-port={self.port}",
            f"--cert-dir={self.work_dir / 'certs'}",
            *_kubeconfig_flags(kubeconfig),
            "--v=2",
        ]
        self.process = ManagedProcess("prometheus-adapter", argv, sink=file_sink(log)).start()
        wait_until(
            lambda: _raise_if_dead(self.process, log) or port_open(host, self.port),
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


def self_signed_ca_and_cert(directory: Path, ip: str) -> Path:
    """``ca.crt``, ``tls.crt``, ``tls.key`` (what KEDA reads from its cert dir): a CA and one
    certificate for both ends of KEDA's gRPC link (server and client auth), valid for this host."""
    directory.mkdir(parents=True, exist_ok=True)

    def ssl(command: str) -> None:  # no argument has a space
        subprocess.run(
            ["openssl", *command.split()], cwd=directory, check=True, capture_output=True, timeout=60
        )

    ssl("req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=celery-fleet-e2e-ca -keyout ca.key -out ca.crt")
    (directory / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        f"subjectAltName=DNS:localhost,DNS:keda-operator,IP:127.0.0.1,IP:{ip}\n",
        encoding="utf-8",
    )
    ssl("req -newkey rsa:2048 -nodes -subj /CN=keda-operator -keyout tls.key -out tls.csr")
    ssl(
        "x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out tls.crt"
    )
    return directory


@dataclass
class Keda:
    """KEDA's operator and metrics API server on this host, as ServiceAccount keda/keda-operator
    with the RBAC of KEDA's release manifests (both of KEDA's Deployments use that account).

    As in KEDA's own manifests: both share one cert dir (the operator serves gRPC on it, the
    metrics server is its client and serves HTTPS with it); the operator watches every
    namespace; certificate rotation and webhook/APIService patching are off (the suite owns
    the APIService, see ``external_metrics_backend``)."""

    kube: Kube
    work_dir: Path
    port: int = 0
    grpc_port: int = field(default_factory=free_port)
    processes: list[ManagedProcess] = field(default_factory=list)

    def start(self) -> Keda:
        host = self.kube.host_address
        self.port = free_port(host)
        self.kube.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "keda"}}])
        apply_files(self.kube, autoscalers("rbac"))
        kubeconfig = service_account_kubeconfig(
            self.kube, "keda", "keda-operator", self.work_dir / "sa-kubeconfig.yaml"
        )
        certs = self_signed_ca_and_cert(self.work_dir / "certs", host)
        log = self.work_dir / "keda.log"
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
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
                f"--bind-address={host}",
                f"--secure-port={self.port}",
                f"--cert-dir={certs}",
                f"--tls-cert-file={certs / 'tls.crt'}",
                f"--tls-private-key-file={certs / 'tls.key'}",
                f"--metrics-service-address=127.0.0.1:{self.grpc_port}",
                "--metrics-service-grpc-authority=localhost",
                f"--port={free_port()}",
                *_kubeconfig_flags(kubeconfig),
                "--v=2",
            ],
            env=env,
            sink=file_sink(log),
        ).start()
        self.processes.append(adapter)
        wait_until(
            lambda: _raise_if_dead(adapter, log) or port_open(host, self.port),
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
