"""The Helm chart with the real helm binary: lint, render a matrix of values files, validate every
object against the Kubernetes OpenAPI schemas offline, and check what the chart promises."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_fleet.timings import REQUEUE_MARGIN_SECONDS, VISIBILITY_MARGIN_SECONDS, Timings
from tests.support import helm as h
from tests.support import netpol

CI_VALUES = sorted((h.CHART / "ci").glob("*.yaml"))
CRD_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
RECOMMENDED = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
)


def ci(name: str) -> Path:
    return h.CHART / "ci" / f"{name}-values.yaml"


@functools.cache
def rendered(values: Path) -> tuple[dict[str, Any], ...]:
    return tuple(h.render([values]))


def objects(docs: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def by_name(docs: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"])


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict(
        obj["metadata"]["labels"] if obj["kind"] == "Pod" else obj["spec"]["template"]["metadata"]["labels"]
    )


def pods(docs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS | {"Pod"}]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def workers(docs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [
        d
        for d in objects(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]


def selected(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and labels.get(expr["key"]) in expr["values"]:
            return False
        if expr["operator"] == "Exists" and not present:
            return False
    return True


@pytest.fixture(scope="session", autouse=True)
def chart_tools() -> None:
    h.ensure_helm()


# ---------------------------------------------------------------------------------- lint & schema


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_helm_lint_is_clean(values: Path) -> None:
    out = h.helm("lint", "--strict", str(h.CHART), "--values", str(values), "--namespace", "fleet")
    assert "0 chart(s) failed" in out, out
    assert "[ERROR]" not in out, out
    assert "[WARNING]" not in out, out


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_rendered_objects_match_kubernetes_openapi_schemas(values: Path) -> None:
    docs = rendered(values)
    core = [d for d in docs if d["kind"] not in CRD_KINDS]
    assert len(core) >= 20
    assert h.openapi_errors(core) == []


def test_openapi_validation_can_fail() -> None:
    deployment = dict(by_name(rendered(ci("defaults")), "Deployment", "fleet-celery-fleet-web"))
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "two", "surprise": True}}
    errors = h.openapi_errors([broken])
    assert len(errors) == 1
    assert "Deployment/fleet-celery-fleet-web" in errors[0]


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_every_object_has_recommended_labels_and_the_release_namespace(values: Path) -> None:
    for doc in rendered(values):
        labels = doc["metadata"].get("labels", {})
        ident = f"{doc['kind']}/{doc['metadata']['name']}"
        assert all(key in labels for key in RECOMMENDED), f"{ident} lacks recommended labels: {labels}"
        assert labels["app.kubernetes.io/instance"] == "fleet"
        assert doc["metadata"].get("namespace") == "fleet", ident
        assert doc["metadata"]["name"].startswith("fleet-celery-fleet"), ident
        assert len(doc["metadata"]["name"]) <= 63, ident


# ---------------------------------------------------------------------------------- selectors


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_selectors_match_their_pods_and_no_other_workload(values: Path) -> None:
    docs = rendered(values)
    workloads = [d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}]
    for workload in workloads:
        selector = workload["spec"]["selector"]
        assert selected(selector, pod_labels(workload)), workload["metadata"]["name"]
        others = [
            w["metadata"]["name"]
            for w in workloads
            if w is not workload and selected(selector, pod_labels(w))
        ]
        assert others == [], f"{workload['metadata']['name']} also selects the pods of {others}"
    for service in objects(docs, "Service"):
        matches = [
            w for w in workloads if selected({"matchLabels": service["spec"]["selector"]}, pod_labels(w))
        ]
        assert len(matches) == 1, service["metadata"]["name"]
        container_ports = {p["name"] for c in pod_spec(matches[0])["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, service["metadata"]["name"]
    for pdb in objects(docs, "PodDisruptionBudget"):
        matches = [w for w in workloads if selected(pdb["spec"]["selector"], pod_labels(w))]
        assert len(matches) == 1, pdb["metadata"]["name"]
    every_pod = pods(docs)
    for policy in objects(docs, "NetworkPolicy"):
        assert any(selected(policy["spec"]["podSelector"], pod_labels(p)) for p in every_pod), policy[
            "metadata"
        ]["name"]
    for pod in every_pod:
        assert any(
            selected(p["spec"]["podSelector"], pod_labels(pod)) for p in objects(docs, "NetworkPolicy")
        ), f"{pod['metadata']['name']} has no NetworkPolicy"


# ---------------------------------------------------------------------------------- security


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_pods_run_restricted(values: Path) -> None:
    for pod in pods(rendered(values)):
        name = pod["metadata"]["name"]
        spec = pod_spec(pod)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        component = pod_labels(pod)["app.kubernetes.io/component"]
        assert spec["automountServiceAccountToken"] is (component == "deletion-cost"), name
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            assert sc.get("privileged") is not True, name
            assert container["resources"]["limits"], name
            assert container["resources"]["requests"], name
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            if component not in ("broker", "database", "test"):
                assert "/tmp" in mounts, f"{name}/{container['name']} has no writable /tmp"
    service_accounts = objects(rendered(values), "ServiceAccount")
    shared = by_name(service_accounts, "ServiceAccount", "fleet-celery-fleet")
    assert shared["automountServiceAccountToken"] is False


def test_only_deletion_cost_talks_to_the_api_with_a_namespaced_role() -> None:
    docs = rendered(ci("autoscaling-off"))
    sa = by_name(docs, "ServiceAccount", "fleet-celery-fleet-deletion-cost")
    assert sa["automountServiceAccountToken"] is True
    role = by_name(docs, "Role", "fleet-celery-fleet-deletion-cost")
    assert role["metadata"]["namespace"] == "fleet"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "patch"]}]
    binding = by_name(docs, "RoleBinding", "fleet-celery-fleet-deletion-cost")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "fleet"}
    ]
    assert not objects(docs, "ClusterRole")
    assert not objects(docs, "ClusterRoleBinding")
    deployment = by_name(docs, "Deployment", "fleet-celery-fleet-deletion-cost")
    command = pod_spec(deployment)["containers"][0]["command"]
    assert command[:2] == ["celery-fleet", "deletion-cost"]
    assert command[command.index("--namespace") + 1] == "fleet"
    assert "app.kubernetes.io/component=worker" in command[command.index("--selector") + 1]
    assert pod_spec(deployment)["serviceAccountName"] == sa["metadata"]["name"]
    assert not any(d["metadata"]["name"].endswith("deletion-cost") for d in rendered(ci("defaults")))


def endpoints(docs: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> dict[str, netpol.Endpoint]:
    """One endpoint per component (its pods' labels and named ports), plus pods and hosts outside it."""
    found: dict[str, netpol.Endpoint] = {}
    for obj in pods(tuple(docs)):
        labels = pod_labels(obj)
        component = labels["app.kubernetes.io/component"]
        ports = {
            p["name"]: p["containerPort"]
            for c in pod_spec(obj)["containers"]
            for p in c.get("ports", [])
            if "name" in p
        }
        found.setdefault(component, netpol.pod(component, obj["metadata"]["namespace"], labels, ports))
    found["neighbour"] = netpol.pod("neighbour", "fleet", {"app": "something-else"})
    found["ingress-controller"] = netpol.pod(
        "ingress-controller", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}
    )
    found["prometheus"] = netpol.pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
    found["kube-dns"] = netpol.pod("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, {"dns": 53})
    found["smtp"] = netpol.outside("smtp", "192.0.2.25")
    found["internet"] = netpol.outside("internet", "203.0.113.7")
    return found


def reachers(
    docs: tuple[dict[str, Any], ...] | list[dict[str, Any]], target: str, port: int | str
) -> set[str]:
    """Every endpoint that may open a connection to ``target`` on ``port``."""
    policies = objects(docs, "NetworkPolicy")
    points = endpoints(docs)
    return {
        name
        for name, source in points.items()
        if name != target and netpol.allowed(policies, source, points[target], port)
    }


def reached(
    docs: tuple[dict[str, Any], ...] | list[dict[str, Any]], source: str, target: str, port: int
) -> bool:
    points = endpoints(docs)
    return netpol.allowed(objects(docs, "NetworkPolicy"), points[source], points[target], port)


#: Everything outside the release: pods of other apps and namespaces, and hosts outside the cluster.
OUTSIDE = {"neighbour", "ingress-controller", "prometheus", "kube-dns", "smtp", "internet"}


def test_network_policies_what_may_reach_what_by_default() -> None:
    docs = rendered(ci("autoscaling-off"))  # the defaults plus the deletion-cost controller
    # The broker and the database: the components that use their secret (celery-fleet.secretsUsedBy).
    assert reachers(docs, "broker", "redis") == {"web", "worker", "beat", "exporter", "deletion-cost"}
    assert reachers(docs, "database", "postgresql") == {"web", "worker", "migrations"}
    # Web and exporter accept HTTP from anyone whose egress allows it: not from beat, the exporter or
    # the migrations Job (egress restricted to DNS and their services); the helm test pod reaches web only.
    unrestricted = {"web", "worker", "deletion-cost"} | OUTSIDE
    assert reachers(docs, "web", "http") == (unrestricted - {"web"}) | {"test"}
    assert reachers(docs, "exporter", "metrics") == unrestricted
    for closed in ("worker", "beat", "migrations", "deletion-cost", "test"):
        assert reachers(docs, closed, 8080) == set(), closed
    # DNS from every pod; the world only from the pods that run the user's code (and deletion cost).
    assert {s for s in reachers(docs, "kube-dns", 53)} >= {"beat", "exporter", "migrations", "test"}
    assert reached(docs, "beat", "kube-dns", 53)
    for source in ("beat", "exporter", "migrations", "test", "broker", "database"):
        assert not reached(docs, source, "internet", 443), source
    for source in ("web", "worker", "deletion-cost"):
        assert reached(docs, source, "internet", 443), source
    assert not reached(docs, "exporter", "database", 5432)
    assert not reached(docs, "migrations", "broker", 6379)


def test_network_policies_with_an_ingress_controller_and_restricted_app_egress() -> None:
    docs = rendered(ci("external"))  # webFrom: ingress-nginx; egress.appPods; an SMTP rule; external services
    assert reachers(docs, "web", "http") == {"ingress-controller", "test"}
    assert reachers(docs, "exporter", "metrics") >= {"prometheus", "ingress-controller"}
    # External broker and database: their address is not in the chart, so their users' egress is open.
    assert reached(docs, "worker", "internet", 6379)
    assert reached(docs, "beat", "internet", 6379)
    # The helm test pod uses neither: DNS, web and the extra rule only.
    assert not reached(docs, "test", "internet", 443)
    assert reached(docs, "test", "smtp", 587)
    assert not reached(docs, "test", "smtp", 25)


def test_network_policies_with_bundled_services_and_restricted_app_egress() -> None:
    docs = h.render([ci("autoscaling-off")], {"networkPolicy.egress.appPods": "true"})
    assert reached(docs, "worker", "broker", 6379)
    assert reached(docs, "worker", "database", 5432)
    assert reached(docs, "worker", "kube-dns", 53)
    assert not reached(docs, "worker", "internet", 443)
    assert not reached(docs, "web", "exporter", 9808)
    assert not reached(docs, "broker", "database", 5432)  # the services themselves connect nowhere
    assert not reached(docs, "database", "kube-dns", 53)


def test_a_database_scheduler_gives_beat_the_database() -> None:
    plain = rendered(ci("defaults"))
    beat = pod_spec(by_name(plain, "Deployment", "fleet-celery-fleet-beat"))["containers"][0]
    assert "DATABASE_URL" not in env_of(beat)
    assert not reached(plain, "beat", "database", 5432)
    docs = h.render(sets={"beat.scheduler": "celery_fleet.beat.LockedDatabaseScheduler"})
    beat = pod_spec(by_name(docs, "Deployment", "fleet-celery-fleet-beat"))["containers"][0]
    assert "DATABASE_URL" in env_of(beat)
    assert reached(docs, "beat", "database", 5432)


def test_the_reachability_check_can_fail() -> None:
    docs = list(rendered(ci("defaults")))
    assert "neighbour" not in reachers(docs, "broker", "redis")
    without_broker_policy = [
        d
        for d in docs
        if not (d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "fleet-celery-fleet-broker")
    ]
    assert "neighbour" in reachers(without_broker_policy, "broker", "redis")


def test_each_component_gets_only_the_secrets_it_uses() -> None:
    docs = rendered(ci("autoscaling-off"))
    secrets = {"SECRET_KEY", "CELERY_BROKER_URL", "DATABASE_URL", "REDIS_PASSWORD", "DATABASE_PASSWORD"}

    def used(name: str, kind: str = "Deployment") -> dict[str, set[str]]:
        spec = pod_spec(by_name(docs, kind, name))
        return {
            c["name"]: set(env_of(c)) & secrets for c in spec.get("initContainers", []) + spec["containers"]
        }

    assert used("fleet-celery-fleet-web") == {
        "wait-for-migrations": {"SECRET_KEY", "DATABASE_URL"},
        "web": {"SECRET_KEY", "CELERY_BROKER_URL", "DATABASE_URL"},
    }
    assert used("fleet-celery-fleet-worker-default")["worker"] == {
        "SECRET_KEY",
        "CELERY_BROKER_URL",
        "DATABASE_URL",
    }
    assert used("fleet-celery-fleet-beat") == {"beat": {"SECRET_KEY", "CELERY_BROKER_URL"}}
    assert used("fleet-celery-fleet-celery-exporter") == {"exporter": {"CELERY_BROKER_URL"}}
    assert used("fleet-celery-fleet-deletion-cost") == {"deletion-cost": {"CELERY_BROKER_URL"}}
    (job,) = objects(docs, "Job")
    assert {c["name"]: set(env_of(c)) & secrets for c in pod_spec(job)["containers"]} == {
        "migrate": {"SECRET_KEY", "DATABASE_URL"}
    }
    (test_pod,) = objects(docs, "Pod")
    assert not set(env_of(pod_spec(test_pod)["containers"][0])) & secrets


# ---------------------------------------------------------------------------------- probes & timings


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_probes(values: Path) -> None:
    docs = rendered(values)
    web = pod_spec(by_name(docs, "Deployment", "fleet-celery-fleet-web"))["containers"][0]
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert web["readinessProbe"]["httpGet"]["port"] == "http"
    for deployment in workers(docs):
        spec = pod_spec(deployment)
        (container,) = spec["containers"]
        probe_dir = env_of(container)["CELERY_FLEET_PROBE_DIR"]
        assert container["livenessProbe"]["exec"]["command"] == [
            "celery-fleet",
            "probe",
            "live",
            "--dir",
            probe_dir,
        ]
        assert container["readinessProbe"]["exec"]["command"] == [
            "celery-fleet",
            "probe",
            "ready",
            "--dir",
            probe_dir,
        ]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == probe_dir)
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert "emptyDir" in volume


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_worker_grace_period_is_the_drain_window_plus_margin(values: Path) -> None:
    given = yaml.safe_load(values.read_text()) or {}
    explicit = {
        g["name"]: g.get("timings", {}).get("terminationGracePeriodSeconds") for g in given.get("workers", [])
    }
    deployments = workers(rendered(values))
    assert deployments
    for deployment in deployments:
        group = deployment["metadata"]["labels"]["celery-fleet/worker-group"]
        spec = pod_spec(deployment)
        env = env_of(spec["containers"][0])
        drain = int(env["CELERY_FLEET_DRAIN_WINDOW"])
        timings = Timings(
            int(env["CELERY_TASK_SOFT_TIME_LIMIT"]),
            int(env["CELERY_TASK_TIME_LIMIT"]),
            drain,
            grace_period=explicit.get(group),
        )
        assert timings.check() == []
        assert spec["terminationGracePeriodSeconds"] == timings.effective_grace_period
        assert spec["terminationGracePeriodSeconds"] >= drain + REQUEUE_MARGIN_SECONDS
        assert int(env["CELERY_FLEET_GRACE_PERIOD"]) == spec["terminationGracePeriodSeconds"]
        assert env["REMAP_SIGTERM"] == "SIGQUIT"
        assert "lifecycle" not in spec["containers"][0], "a worker preStop would eat into the drain window"


def test_explicit_grace_period_and_derived_visibility_timeout() -> None:
    docs = rendered(ci("hpa"))
    exports = pod_spec(by_name(docs, "Deployment", "fleet-celery-fleet-worker-exports"))
    assert exports["terminationGracePeriodSeconds"] == 90
    default = pod_spec(by_name(docs, "Deployment", "fleet-celery-fleet-worker-default"))
    assert default["terminationGracePeriodSeconds"] == 30 + REQUEUE_MARGIN_SECONDS
    config = by_name(docs, "ConfigMap", "fleet-celery-fleet-config")["data"]
    # One visibility timeout for the fleet: the largest time limit (exports: 600 s) + margin.
    assert config["CELERY_FLEET_VISIBILITY_TIMEOUT"] == str(600 + VISIBILITY_MARGIN_SECONDS)
    multi = by_name(rendered(ci("multi-groups")), "ConfigMap", "fleet-celery-fleet-config")["data"]
    assert multi["CELERY_FLEET_VISIBILITY_TIMEOUT"] == str(1800 + VISIBILITY_MARGIN_SECONDS)


def test_web_grace_covers_prestop_and_gunicorn_drain() -> None:
    spec = pod_spec(by_name(rendered(ci("defaults")), "Deployment", "fleet-celery-fleet-web"))
    (web,) = spec["containers"]
    env = env_of(web)
    sleep = int(web["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] > sleep + int(env["GUNICORN_GRACEFUL_TIMEOUT"])
    assert web["command"] == [
        "gunicorn",
        "--config",
        "python:celery_fleet.gunicorn_conf",
        "fleetsite.asgi:application",
    ]


# ---------------------------------------------------------------------------------- autoscaling


@pytest.mark.parametrize(
    ("values", "mode"), [("keda", "keda"), ("hpa", "hpa"), ("autoscaling-off", "none"), ("defaults", "none")]
)
def test_autoscaling_objects_follow_the_mode(values: str, mode: str) -> None:
    docs = rendered(ci(values))
    scaled = {d["metadata"]["name"]: d for d in objects(docs, "ScaledObject")}
    hpas = {
        d["metadata"]["name"]: d
        for d in objects(docs, "HorizontalPodAutoscaler")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    }
    for deployment in workers(docs):
        name = deployment["metadata"]["name"]
        queues = deployment["metadata"]["annotations"]["celery-fleet/queues"].split(",")
        command = pod_spec(deployment)["containers"][0]["command"]
        assert command[:4] == ["celery", "-A", "fleetsite", "worker"]  # app.celeryApp's default: the example
        assert command[command.index("--queues") + 1].split(",") == queues
        assert {"--without-gossip", "--without-mingle"} <= set(command)
        if mode == "none":
            assert "replicas" in deployment["spec"], name
            assert name not in scaled
            assert name not in hpas
            continue
        assert "replicas" not in deployment["spec"], f"{name} is autoscaled; replicas would fight the scaler"
        if mode == "keda":
            obj = scaled[name]
            assert name not in hpas
            assert obj["apiVersion"] == "keda.sh/v1alpha1"
            assert obj["spec"]["scaleTargetRef"]["name"] == name
            (trigger,) = obj["spec"]["triggers"]
            assert trigger["type"] == "prometheus"
            assert trigger["metricType"] == "AverageValue"
            query = trigger["metadata"]["query"]
            assert query.startswith("sum(celery_fleet_queue_backlog{")
            assert f'queue_name=~"{"|".join(queues)}"' in query
            assert float(trigger["metadata"]["threshold"]) > 0
            assert "activationThreshold" in trigger["metadata"]
            drain = int(env_of(pod_spec(deployment)["containers"][0])["CELERY_FLEET_DRAIN_WINDOW"])
            assert obj["spec"]["cooldownPeriod"] >= drain
            assert obj["spec"]["fallback"]["replicas"] >= 0
            assert obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"]
            assert "horizontalPodAutoscalerConfig" in obj["spec"]["advanced"]
        else:
            obj = hpas[name]
            assert name not in scaled
            assert obj["apiVersion"] == "autoscaling/v2"
            (metric,) = obj["spec"]["metrics"]
            assert metric["type"] == "External"
            assert metric["external"]["metric"]["name"] == "celery_fleet_queue_backlog"
            (expr,) = metric["external"]["metric"]["selector"]["matchExpressions"]
            assert expr == {"key": "queue_name", "operator": "In", "values": queues}
            assert metric["external"]["target"]["type"] == "AverageValue"
    if mode == "none":
        assert not scaled
        assert not hpas


def test_keda_behavior_reaches_the_hpa_keda_creates() -> None:
    obj = by_name(rendered(ci("keda")), "ScaledObject", "fleet-celery-fleet-worker-default")
    behavior = obj["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 60
    assert obj["spec"]["minReplicaCount"] == 0
    assert obj["spec"]["triggers"][0]["metadata"]["activationThreshold"] == "1"


def test_latency_target_adds_a_second_trigger_and_metric() -> None:
    docs = rendered(ci("latency"))
    scaled = by_name(docs, "ScaledObject", "fleet-celery-fleet-worker-default")
    latency = [t for t in scaled["spec"]["triggers"] if t["metricType"] == "Value"]
    assert len(latency) == 1
    assert latency[0]["metadata"]["threshold"] == "30"
    assert "max(celery_fleet_queue_oldest_age_seconds{" in latency[0]["metadata"]["query"]
    assert 'queue_name=~"default|periodic"' in latency[0]["metadata"]["query"]
    hpa = by_name(docs, "HorizontalPodAutoscaler", "fleet-celery-fleet-worker-exports")
    names = [m["external"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    assert names == ["celery_fleet_queue_backlog", "celery_fleet_queue_oldest_age_seconds"]
    assert hpa["spec"]["metrics"][1]["external"]["target"] == {"type": "Value", "value": "60"}
    # Without a latency target there is one trigger only.
    plain = by_name(rendered(ci("keda")), "ScaledObject", "fleet-celery-fleet-worker-default")
    assert [t["metricType"] for t in plain["spec"]["triggers"]] == ["AverageValue"]


def group_autoscaling(docs: list[dict[str, Any]], group: str, mode: str) -> dict[str, Any]:
    """The rendered scaler of a group, as (min, max, backlog target, latency target, behavior)."""
    name = f"fleet-celery-fleet-worker-{group}"
    if mode == "keda":
        spec = by_name(docs, "ScaledObject", name)["spec"]
        triggers = {t["metricType"]: t["metadata"]["threshold"] for t in spec["triggers"]}
        return {
            "min": spec["minReplicaCount"],
            "max": spec["maxReplicaCount"],
            "backlog": triggers["AverageValue"],
            "oldestAge": triggers.get("Value"),
            "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
            "pollingInterval": spec["pollingInterval"],
            "cooldownPeriod": spec["cooldownPeriod"],
        }
    spec = by_name(docs, "HorizontalPodAutoscaler", name)["spec"]
    targets = [m["external"]["target"] for m in spec["metrics"]]
    return {
        "min": spec["minReplicas"],
        "max": spec["maxReplicas"],
        "backlog": targets[0]["averageValue"],
        "oldestAge": targets[1]["value"] if len(targets) > 1 else None,
        "behavior": spec["behavior"],
    }


def test_a_new_group_takes_every_default_from_worker_defaults() -> None:
    """A group with a name and queues only is the policy's group: 2 x concurrency per pod, and so on."""
    from celery_fleet.autoscale.local import group_policy

    values = yaml.safe_load((h.CHART / "values.yaml").read_text())["workerDefaults"]
    for mode in ("keda", "hpa"):
        docs = h.render(
            sets={
                "workers[0].name": "orders",
                "workers[0].queues[0]": "orders",
                "workers[0].queues[1]": "periodic",
                "workers[0].concurrency": "3",
                "workerDefaults.autoscaling.mode": mode,
            }
        )
        got = group_autoscaling(docs, "orders", mode)
        ours = group_policy(values["autoscaling"]["minReplicas"], values["autoscaling"]["maxReplicas"], 3)
        assert float(got["backlog"]) == ours.backlog_per_worker == 6.0
        assert got["max"] == ours.max_replicas
        # An HPA cannot scale to zero: it renders at least 1; KEDA takes 0 as it is.
        assert got["min"] == (ours.min_replicas if mode == "keda" else max(ours.min_replicas, 1))
        assert float(got["oldestAge"]) == ours.oldest_age_target_seconds
        assert got["behavior"] == ours.as_dict()["behavior"]
        if mode == "keda":
            assert got["pollingInterval"] == ours.sync_period_seconds
            assert got["cooldownPeriod"] == ours.cooldown_seconds
        deployment = pod_spec(by_name(docs, "Deployment", "fleet-celery-fleet-worker-orders"))
        (container,) = deployment["containers"]
        assert container["resources"] == values["resources"]
        assert container["command"][container["command"].index("--loglevel") + 1] == values["logLevel"]
        assert env_of(container)["CELERY_FLEET_PROBE_DIR"] == values["probeDir"]
        assert {k: container["livenessProbe"][k] for k in values["livenessProbe"]} == values["livenessProbe"]


def test_worker_defaults_changed_once_reach_every_group_and_a_group_overrides_them() -> None:
    docs = rendered(ci("multi-groups"))  # workerDefaults: concurrency 2, resources, nodeSelector, ...
    by_group = {d["metadata"]["labels"]["celery-fleet/worker-group"]: pod_spec(d) for d in workers(docs)}
    assert set(by_group) == {"fast", "exports", "periodic", "reports"}
    concurrency = {
        g: s["containers"][0]["command"][s["containers"][0]["command"].index("--concurrency") + 1]
        for g, s in by_group.items()
    }
    assert concurrency == {"fast": "8", "exports": "2", "periodic": "1", "reports": "3"}
    # Maps merge key by key (the default nodeSelector stays under a group's own tolerations) ...
    assert all(s["nodeSelector"] == {"kubernetes.io/os": "linux"} for s in by_group.values())
    assert by_group["reports"]["tolerations"] == [
        {"key": "reports", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert "tolerations" not in by_group["fast"]
    # ... a group's scalar wins over the default, including false and 0 ...
    loglevel = by_group["periodic"]["containers"][0]["command"]
    assert loglevel[loglevel.index("--loglevel") + 1] == "WARNING"
    pdbs = {d["metadata"]["name"] for d in objects(docs, "PodDisruptionBudget")}
    assert "fleet-celery-fleet-worker-periodic" not in pdbs
    # ... and the scalers mix both: exports is concurrency 2 (default) x 2 per process, hpa min 1.
    exports = group_autoscaling(list(docs), "exports", "hpa")
    assert (exports["min"], exports["max"], exports["backlog"], exports["oldestAge"]) == (1, 4, "4", None)
    fast = group_autoscaling(list(docs), "fast", "keda")
    assert (fast["min"], fast["max"], fast["backlog"]) == (1, 30, "20")
    scaled = by_name(docs, "ScaledObject", "fleet-celery-fleet-worker-fast")
    assert scaled["spec"]["triggers"][0]["metadata"]["serverAddress"] == "http://prometheus.monitoring:9090"


def test_the_exports_group_of_values_yaml_differs_only_where_it_says() -> None:
    values = yaml.safe_load((h.CHART / "values.yaml").read_text())
    default, exports = values["workers"]
    assert set(default) == {"name", "queues"}, "the default group is workerDefaults' group"
    assert "targetBacklogPerWorker" not in exports["autoscaling"]
    docs = h.render(sets={"workerDefaults.autoscaling.mode": "keda"})
    got = group_autoscaling(docs, "exports", "keda")
    # concurrency 2 x targetBacklogPerProcess 2: the 2-per-process rule, not a number of its own.
    assert got["backlog"] == "4"
    assert got["max"] == 5
    assert got["behavior"]["scaleDown"] == {
        "stabilizationWindowSeconds": 300,
        "selectPolicy": "Max",
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
    }


def test_multiple_worker_groups_each_get_their_own_deployment_and_pdb() -> None:
    docs = rendered(ci("multi-groups"))
    names = sorted(d["metadata"]["labels"]["celery-fleet/worker-group"] for d in workers(docs))
    assert names == ["exports", "fast", "periodic", "reports"]
    assert {d["metadata"]["name"] for d in objects(docs, "ScaledObject")} == {
        "fleet-celery-fleet-worker-fast"
    }
    assert "fleet-celery-fleet-worker-exports" in {
        d["metadata"]["name"] for d in objects(docs, "HorizontalPodAutoscaler")
    }
    pdbs = {d["metadata"]["name"] for d in objects(docs, "PodDisruptionBudget")}
    assert "fleet-celery-fleet-worker-fast" in pdbs
    assert "fleet-celery-fleet-worker-periodic" not in pdbs
    assert not any(d["metadata"]["name"].endswith("-beat") for d in docs if d["kind"] == "Deployment")
    exporter = pod_spec(by_name(docs, "Deployment", "fleet-celery-fleet-celery-exporter"))["containers"][0]
    assert env_of(exporter)["CELERY_FLEET_QUEUES"] == "default,exports,periodic,reports,reports-low"


def test_web_cpu_hpa_and_ingress() -> None:
    docs = rendered(ci("external"))
    web = by_name(docs, "Deployment", "fleet-celery-fleet-web")
    assert "replicas" not in web["spec"]
    hpa = by_name(docs, "HorizontalPodAutoscaler", "fleet-celery-fleet-web")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    ingress = by_name(docs, "Ingress", "fleet-celery-fleet-web")
    assert ingress["spec"]["rules"][0]["host"] == "fleet.example.com"
    config = by_name(docs, "ConfigMap", "fleet-celery-fleet-config")["data"]
    assert "fleet.example.com" in config["ALLOWED_HOSTS"].split(",")
    assert "fleet-celery-fleet-web" in config["ALLOWED_HOSTS"].split(",")


# ------------------------------------------------------------------------------ the user's app

#: A project the chart has never seen, named the way a user names theirs (app.*, image.*).
OTHER_APP = {
    "app.celeryApp": "shop.tasks:celery",
    "app.asgiApplication": "shop.web:app",
    "app.djangoSettingsModule": "shop.conf.production",
    "image.repository": "registry.example.com/shop",
    "image.tag": "1.2.3",
    "migrations.command": "{python,manage.py,migrate,--no-input,--database=primary}",
    "migrations.checkCommand": "{python,manage.py,migrate,--check,--database=primary}",
}


def test_another_project_is_run_by_its_own_names_and_the_example_is_never_named() -> None:
    for values in (ci("defaults"), ci("keda"), ci("multi-groups")):
        docs = h.render([values], OTHER_APP)
        text = yaml.safe_dump_all(docs)
        assert "fleetsite" not in text, f"{values.name}: the example leaks into another app's release"
        config = by_name(docs, "ConfigMap", "fleet-celery-fleet-config")["data"]
        assert config["DJANGO_SETTINGS_MODULE"] == "shop.conf.production"
        assert config["CELERY_FLEET_APP"] == "shop.tasks:celery"
        for obj in pods(tuple(docs)):
            if obj["metadata"]["labels"]["app.kubernetes.io/component"] in ("broker", "database"):
                continue  # images of their own (broker.image, database.image)
            spec = pod_spec(obj)
            for container in spec.get("initContainers", []) + spec["containers"]:
                assert container["image"] == "registry.example.com/shop:1.2.3", obj["metadata"]["name"]
        web = pod_spec(by_name(docs, "Deployment", "fleet-celery-fleet-web"))["containers"][0]
        assert web["command"][-1] == "shop.web:app"
        for deployment in workers(tuple(docs)):
            assert pod_spec(deployment)["containers"][0]["command"][:4] == [
                "celery", "-A", "shop.tasks:celery", "worker",
            ]  # fmt: skip
        for beat in [d for d in objects(docs, "Deployment") if d["metadata"]["name"].endswith("-beat")]:
            assert pod_spec(beat)["containers"][0]["command"][:4] == [
                "celery",
                "-A",
                "shop.tasks:celery",
                "beat",
            ]
        (job,) = objects(docs, "Job")
        script = pod_spec(job)["containers"][0]["command"][-1]
        assert "exec 'python' 'manage.py' 'migrate' '--no-input' '--database=primary'" in script
        web_init = pod_spec(by_name(docs, "Deployment", "fleet-celery-fleet-web"))["initContainers"]
        assert "'python' 'manage.py' 'migrate' '--check' '--database=primary'" in web_init[0]["command"][-1]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("app.celeryApp", "my-project", "celeryApp"),
        ("app.asgiApplication", "shop.wsgi", "asgiApplication"),
        ("app.djangoSettingsModule", "shop/settings.py", "djangoSettingsModule"),
    ],
)
def test_app_names_that_cannot_be_python_modules_are_refused(key: str, value: str, message: str) -> None:
    assert message in h.render_error(sets={key: value})


# ---------------------------------------------------------------------------------- components


def test_beat_runs_exactly_one_replica_with_recreate() -> None:
    beat = by_name(rendered(ci("defaults")), "Deployment", "fleet-celery-fleet-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = pod_spec(beat)["containers"]
    assert container["command"][:4] == ["celery", "-A", "fleetsite", "beat"]
    assert container["livenessProbe"]["exec"]["command"][:2] == ["celery-fleet", "probe-beat"]
    assert container["resources"]["limits"]
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        assert not [
            d for d in rendered(ci("keda")) if d["kind"] == kind and d["metadata"]["name"].endswith("-beat")
        ]
    config = by_name(rendered(ci("defaults")), "ConfigMap", "fleet-celery-fleet-config")["data"]
    assert "RedBeat" in config["CELERY_BEAT_SCHEDULER"]


def test_bundled_broker_and_database_use_pinned_official_images_secrets_and_pvcs() -> None:
    docs = rendered(ci("defaults"))
    redis = by_name(docs, "StatefulSet", "fleet-celery-fleet-broker")
    (container,) = pod_spec(redis)["containers"]
    repo, tag = container["image"].split(":")
    assert repo == "redis"
    assert tag
    assert tag != "latest"
    assert "--appendonly yes" in container["command"][-1]
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "fleet-celery-fleet-broker"
    secret = by_name(docs, "Secret", "fleet-celery-fleet-broker")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    postgres = by_name(docs, "StatefulSet", "fleet-celery-fleet-database")
    (pg,) = pod_spec(postgres)["containers"]
    assert pg["image"].split(":")[0] == "postgres"
    assert pg["image"].split(":")[1] != "latest"
    assert env_of(pg)["POSTGRES_PASSWORD"]["secretKeyRef"]["name"] == "fleet-celery-fleet-database"
    assert postgres["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    # The URLs come composed from the services' own Secrets (one password per render, encoded there).
    web = env_of(pod_spec(by_name(docs, "Deployment", "fleet-celery-fleet-web"))["containers"][0])
    assert web["CELERY_BROKER_URL"] == {
        "secretKeyRef": {"name": "fleet-celery-fleet-broker", "key": "CELERY_BROKER_URL"}
    }
    assert web["DATABASE_URL"] == {
        "secretKeyRef": {"name": "fleet-celery-fleet-database", "key": "DATABASE_URL"}
    }
    assert "REDIS_PASSWORD" not in web
    assert "DATABASE_PASSWORD" not in web


def secret_value(docs: list[dict[str, Any]], name: str, key: str) -> str:
    import base64

    return base64.b64decode(by_name(docs, "Secret", name)["data"][key]).decode()


def test_explicit_passwords_are_used_as_given() -> None:
    key = "k-secret-" + "x" * 50
    docs = h.render(
        sets={"broker.auth.password": "b-pass", "database.auth.password": "d-pass", "django.secretKey": key}
    )
    assert secret_value(docs, "fleet-celery-fleet-broker", "redis-password") == "b-pass"
    assert secret_value(docs, "fleet-celery-fleet-database", "postgres-password") == "d-pass"
    assert secret_value(docs, "fleet-celery-fleet-app", "SECRET_KEY") == key
    assert (
        secret_value(docs, "fleet-celery-fleet-broker", "CELERY_BROKER_URL")
        == "redis://:b-pass@fleet-celery-fleet-broker:6379/0"
    )
    assert (
        secret_value(docs, "fleet-celery-fleet-database", "DATABASE_URL")
        == "postgres://fleet:d-pass@fleet-celery-fleet-database:5432/fleet"
    )


def test_generated_secrets_are_long_enough_and_each_url_matches_its_password() -> None:
    docs = h.render()
    # Django's check --deploy wants at least 50 characters (security.W009).
    assert len(secret_value(docs, "fleet-celery-fleet-app", "SECRET_KEY")) == 64
    password = secret_value(docs, "fleet-celery-fleet-broker", "redis-password")
    assert len(password) == 40
    assert secret_value(docs, "fleet-celery-fleet-broker", "CELERY_BROKER_URL") == (
        f"redis://:{password}@fleet-celery-fleet-broker:6379/0"
    )
    db_password = secret_value(docs, "fleet-celery-fleet-database", "postgres-password")
    assert db_password != password
    assert f":{db_password}@" in secret_value(docs, "fleet-celery-fleet-database", "DATABASE_URL")


def test_external_broker_and_database_replace_the_statefulsets() -> None:
    docs = rendered(ci("external"))
    assert not objects(docs, "StatefulSet")
    names = {d["metadata"]["name"] for d in docs}
    assert "fleet-celery-fleet-broker" not in names
    assert "fleet-celery-fleet-database" not in names
    env = env_of(pod_spec(by_name(docs, "Deployment", "fleet-celery-fleet-web"))["containers"][0])
    assert env["CELERY_BROKER_URL"] == {
        "secretKeyRef": {"name": "fleet-celery-fleet-app", "key": "CELERY_BROKER_URL"}
    }
    assert env["DATABASE_URL"] == {"secretKeyRef": {"name": "fleet-database-url", "key": "url"}}
    assert env["SECRET_KEY"] == {"secretKeyRef": {"name": "fleet-django", "key": "SECRET_KEY"}}
    app = by_name(docs, "Secret", "fleet-celery-fleet-app")
    assert set(app["data"]) == {"CELERY_BROKER_URL"}


def test_exporter_service_monitor_rules_and_dashboard() -> None:
    docs = rendered(ci("keda"))
    exporter = by_name(docs, "Deployment", "fleet-celery-fleet-celery-exporter")
    (container,) = pod_spec(exporter)["containers"]
    assert container["command"] == ["celery-fleet", "exporter", "--port", "9808"]
    env = env_of(container)
    assert env["CELERY_FLEET_QUEUES"] == "default,periodic,exports"
    assert "CELERY_BROKER_URL" in env
    service = by_name(docs, "Service", "fleet-celery-fleet-celery-exporter")
    assert "celery" in service["metadata"]["name"]
    assert service["spec"]["ports"][0]["port"] == 9808
    monitor = by_name(docs, "ServiceMonitor", "fleet-celery-fleet-celery-exporter")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert selected(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    rule = by_name(docs, "PrometheusRule", "fleet-celery-fleet-celery-exporter")
    source = yaml.safe_load((h.CHART / "files" / "prometheus-rules.yaml").read_text())
    assert rule["spec"]["groups"] == source.get("spec", source)["groups"]
    dashboards = [
        d for d in objects(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    (dashboard,) = dashboards
    assert "celery-fleet.json" in dashboard["data"]
    assert not objects(rendered(ci("defaults")), "ServiceMonitor")
    assert not objects(rendered(ci("defaults")), "PrometheusRule")


def test_migrations_job_is_named_after_the_revision_and_pods_wait_for_it() -> None:
    docs = rendered(ci("defaults"))
    (job,) = objects(docs, "Job")
    assert job["metadata"]["name"] == "fleet-celery-fleet-migrate-1"
    assert "helm.sh/hook" not in job["metadata"].get("annotations", {}), (
        "a hook would deadlock on the bundled DB"
    )
    script = pod_spec(job)["containers"][0]["command"][-1]
    assert "'migrate' '--no-input'" in script
    assert "ensure_connection" in script
    for name in (
        "fleet-celery-fleet-web",
        "fleet-celery-fleet-worker-default",
        "fleet-celery-fleet-worker-exports",
    ):
        (init,) = pod_spec(by_name(docs, "Deployment", name))["initContainers"]
        assert "'migrate' '--check'" in init["command"][-1]


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_config_and_secret_checksums_roll_the_pods(values: Path) -> None:
    docs = rendered(values)
    for pod in pods(docs):
        component = pod_labels(pod)["app.kubernetes.io/component"]
        if component in ("broker", "database", "test"):
            continue
        annotations = pod["spec"]["template"]["metadata"]["annotations"]
        assert len(annotations["checksum/config"]) == 64
        assert len(annotations["checksum/secret"]) == 64


def test_checksums_change_with_the_config_and_the_secret_inputs_only() -> None:
    key_a, key_b = "a" * 50, "b" * 50
    before = by_name(h.render(sets={"django.secretKey": key_a}), "Deployment", "fleet-celery-fleet-web")
    after = by_name(
        h.render(sets={"django.secretKey": key_a, "django.logLevel": "DEBUG"}),
        "Deployment",
        "fleet-celery-fleet-web",
    )
    assert (
        before["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        != after["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    )

    def secret_checksum(sets: dict[str, str]) -> str:
        web = by_name(h.render(sets=sets), "Deployment", "fleet-celery-fleet-web")
        return str(web["spec"]["template"]["metadata"]["annotations"]["checksum/secret"])

    # Generated passwords do not make every render roll the pods; a changed secret input does.
    assert secret_checksum({}) == secret_checksum({})
    assert secret_checksum({"django.secretKey": key_a}) != secret_checksum({"django.secretKey": key_b})


def test_helm_test_pod_submits_a_job_through_the_api() -> None:
    (pod,) = objects(rendered(ci("defaults")), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert env_of(container)["BASE_URL"] == "http://fleet-celery-fleet-web:80"
    assert "/api/jobs/" in container["command"][-1]
    assert "SUCCESS" in container["command"][-1]


# ---------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"beat.replicaCount": "2"}, "beat.replicaCount"),
        ({"web.bogus": "1"}, "bogus"),
        (
            {"workers[0].name": "default", "workers[0].queues[0]": "default", "workers[0].surprise": "1"},
            "surprise",
        ),
        ({"web.replicaCount": "many"}, "web.replicaCount"),
        ({"workers[0].autoscaling.mode": "sometimes"}, "mode"),
        ({"exporter.serviceMonitor.interval": "often"}, "interval"),
        ({"django.secretKey": "forty-nine-characters-are-too-few-for-django-----"}, "secretKey"),
        ({"workerDefaults.surprise": "1"}, "surprise"),
        ({"workerDefaults.autoscaling.targetBacklogPerProcess": "0"}, "targetBacklogPerProcess"),
        ({"web.proxy.trustedIPs[0]": "ingress-nginx"}, "trustedIPs"),
        ({"django.https.enabled": "maybe"}, "enabled"),
    ],
)
def test_schema_refuses_bad_values(sets: dict[str, str], message: str) -> None:
    assert message in h.render_error(sets={k: v for k, v in sets.items()})


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            {"timings.softTimeLimit": "300", "timings.timeLimit": "300"},
            "softTimeLimit (300s) must be below timeLimit (300s)",
        ),
        (
            {
                "workers[0].name": "default",
                "workers[0].queues[0]": "default",
                "workers[0].queues[1]": "periodic",
                "workers[0].timings.drainWindow": "60",
                "workers[0].timings.terminationGracePeriodSeconds": "65",
            },
            "workers[default]: terminationGracePeriodSeconds (65s) must be at least drainWindow (60s) + 10s",
        ),
        (
            {"timings.visibilityTimeout": "400"},
            "workers[exports]: visibilityTimeout (400s) must be at least timeLimit (600s) + 30s",
        ),
        (
            {"broker.external.enabled": "true"},
            "broker.external.enabled is true but neither broker.external.url nor "
            "broker.external.existingSecret",
        ),
        ({"database.external.enabled": "true"}, "database.external.enabled is true but neither"),
        (
            {"django.generateSecretKey": "false"},
            "no SECRET_KEY: set django.secretKey or django.existingSecret",
        ),
        (
            {
                "workers[0].name": "a",
                "workers[0].queues[0]": "exports",
                "workers[0].queues[1]": "periodic",
                "workers[1].name": "b",
                "workers[1].queues[0]": "exports",
            },
            'queue "exports" is consumed by both workers[a] and workers[b]',
        ),
        (
            {"workers[0].name": "a", "workers[0].queues[0]": "default"},
            'no worker group consumes the "periodic" queue',
        ),
        (
            {
                "workers[0].name": "default",
                "workers[0].queues[0]": "default",
                "workers[0].queues[1]": "periodic",
                "workers[0].autoscaling.mode": "keda",
                "workers[0].autoscaling.cooldownPeriod": "10",
            },
            "autoscaling.cooldownPeriod (10s) must be at least the drain window (30s)",
        ),
        ({"web.terminationGracePeriodSeconds": "20"}, "web: terminationGracePeriodSeconds (20s) must exceed"),
        ({"django.https.enabled": "true"}, "web.proxy.trustedIPs is empty"),
        (
            {
                "web.ingress.enabled": "true",
                "web.ingress.hosts[0].host": "fleet.example.com",
                "web.ingress.tls[0].secretName": "fleet-tls",
            },
            "HTTPS is on (django.https.enabled, or web.ingress.tls) but web.proxy.trustedIPs is empty",
        ),
    ],
)
def test_validate_values_fails_with_a_clear_message(sets: dict[str, str], message: str) -> None:
    error = h.render_error(sets=sets)
    assert "celery-fleet: invalid values" in error
    assert message in error, error


def test_validate_values_matches_celery_fleet_timings() -> None:
    """The chart refuses exactly what celery_fleet.timings refuses, on a grid of timings."""
    for soft, hard, drain, grace in [
        (10, 20, 5, 15),
        (20, 20, 5, 15),
        (10, 20, 5, 14),
        (30, 20, 0, 10),
        (10, 20, 50, 60),
        (10, 20, 50, 59),
    ]:
        python_ok = Timings(soft, hard, drain, grace_period=grace).check() == []
        sets = {
            "timings.softTimeLimit": str(soft),
            "timings.timeLimit": str(hard),
            "timings.drainWindow": str(drain),
            "workers[0].name": "all",
            "workers[0].queues[0]": "default",
            "workers[0].queues[1]": "exports",
            "workers[0].queues[2]": "periodic",
            "workers[0].timings.terminationGracePeriodSeconds": str(grace),
        }
        proc = h.helm_result(*h.template_args(sets=sets))
        assert (proc.returncode == 0) == python_ok, (soft, hard, drain, grace, proc.stderr)


# ---------------------------------------------------------------------------------- plain manifests


def test_plain_manifests_are_in_sync_with_the_chart() -> None:
    script = h.ROOT / "k8s" / "render.sh"
    proc = subprocess.run(
        ["bash", str(script), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**__import__("os").environ, "HELM": str(h.ensure_helm())},
    )
    assert proc.returncode == 0, (
        f"k8s/manifests is stale; run k8s/render.sh\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )
    docs = [
        d for d in yaml.safe_load_all((h.ROOT / "k8s" / "manifests" / "celery-fleet.yaml").read_text()) if d
    ]
    assert h.openapi_errors([d for d in docs if d["kind"] not in CRD_KINDS]) == []
    assert not [d for d in docs if d["kind"] == "Secret"], "plain manifests must not carry generated secrets"


def test_notes_tell_how_to_open_the_site_and_the_dashboard(tmp_path: Path) -> None:
    # NOTES.txt only renders on install; render its define through a throwaway template instead.
    import shutil

    chart = tmp_path / "celery-fleet"
    shutil.copytree(h.CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "celery-fleet.notes" . | quote }}\n'
    )
    for values, expect in [
        ("defaults", "port-forward service/fleet-celery-fleet-web 8000:80"),
        ("external", "https://fleet.example.com/"),
    ]:
        out = h.helm(
            "template",
            "fleet",
            str(chart),
            "--namespace",
            "fleet",
            "-s",
            "templates/zz-notes.yaml",
            "--values",
            str(chart / "ci" / f"{values}-values.yaml"),
        )
        notes = yaml.safe_load(out)["data"]["notes"]
        assert expect in notes
        assert 'grafana_dashboard="1"' in notes
        assert "helm test fleet" in notes
    assert (h.CHART / "templates" / "NOTES.txt").read_text().strip() == '{{ include "celery-fleet.notes" . }}'


#: Blocks passed to Kubernetes as they are: their comment above documents the whole block.
PASSTHROUGH = {
    "podSecurityContext",
    "securityContext",
    "resources",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "behavior",
    "fallback",
    "prometheus",
    "timings",
    "pdb",
    "httpGet",
}


def test_values_yaml_documents_every_key() -> None:
    import re

    lines = (h.CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)(- )?([A-Za-z_][\w.-]*):", line)
        if not match:
            continue
        indent = len(match.group(1)) + (2 if match.group(2) else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [key for _, key in stack]
        stack.append((indent, match.group(3)))
        if any(parent in PASSTHROUGH for parent in parents):
            continue
        previous = lines[i - 1].strip() if i else ""
        if not (previous.startswith("#") or previous.startswith("- #")):
            undocumented.append(f"values.yaml:{i + 1}: {line.strip()}")
    assert undocumented == []
    documented = {m.group(1) for m in re.finditer(r"^([A-Za-z]\w*):", "\n".join(lines), re.M)}
    schema = __import__("json").loads((h.CHART / "values.schema.json").read_text())
    assert documented <= set(schema["properties"]), "a values key the schema does not know"


def test_every_worker_group_key_has_its_default_in_worker_defaults() -> None:
    """A group may set exactly the keys workerDefaults holds (plus name, queues, timings), and each of
    them has a value there: no template default fills in a missing one."""
    import json

    schema = json.loads((h.CHART / "values.schema.json").read_text())
    settings = schema["definitions"]["workerSettings"]["properties"]
    group_keys = set(schema["properties"]["workers"]["items"]["properties"])
    assert group_keys == set(settings) | {"name", "queues", "timings"}
    assert set(schema["properties"]["workerDefaults"]["properties"]) == set(settings)
    defaults = yaml.safe_load((h.CHART / "values.yaml").read_text())["workerDefaults"]
    assert set(defaults) == set(settings)
    assert set(defaults["autoscaling"]) == set(settings["autoscaling"]["properties"])
    templates = "".join(p.read_text() for p in (h.CHART / "templates").rglob("*") if p.is_file())
    assert "groupDefaults" not in templates
