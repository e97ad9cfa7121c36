"""What may reach what under a set of NetworkPolicies: the Kubernetes rules, read from rendered objects.

A connection from one endpoint to another on a port is allowed when the source's egress allows it
(no policy selecting the source with ``Egress`` in its ``policyTypes``, or one of their egress rules
matches) and the destination's ingress allows it (the same, mirrored). A rule matches when its
``ports`` are empty or name the port (a named port is the destination container's), and its peers
(``to``/``from``) are empty or one selects the other endpoint: ``podSelector`` within the policy's
namespace, ``namespaceSelector`` (with an optional ``podSelector``), or ``ipBlock`` for endpoints
outside the cluster. Enough of the API to read the chart's policies; not a CNI.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """A pod (labels in a namespace, its named container ports) or an address outside the cluster."""

    name: str
    namespace: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)
    ip: str = ""

    @property
    def is_pod(self) -> bool:
        return not self.ip


def pod(
    name: str, namespace: str, labels: Mapping[str, str], ports: Mapping[str, int] | None = None
) -> Endpoint:
    return Endpoint(
        name=name,
        namespace=namespace,
        labels=dict(labels),
        namespace_labels={"kubernetes.io/metadata.name": namespace},
        ports=dict(ports or {}),
    )


def outside(name: str, ip: str) -> Endpoint:
    return Endpoint(name=name, ip=ip)


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against labels; an empty selector selects all."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        if other.is_pod:
            return False
        block = peer["ipBlock"]
        address = ipaddress.ip_address(other.ip)
        inside = address in ipaddress.ip_network(block["cidr"])
        return inside and not any(address in ipaddress.ip_network(c) for c in block.get("except") or [])
    if not other.is_pod:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), other.labels)


def _port_matches(rule: Mapping[str, Any], port: int, protocol: str, destination: Endpoint) -> bool:
    ports = rule.get("ports") or []
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            wanted = destination.ports.get(wanted)
        end = entry.get("endPort", wanted)
        if wanted is not None and wanted <= port <= end:
            return True
    return False


def _allowed_by(
    policies: Iterable[Mapping[str, Any]],
    subject: Endpoint,
    other: Endpoint,
    direction: str,
    port: int,
    protocol: str,
    destination: Endpoint,
) -> bool:
    kind, rules_key, peers_key = {
        "egress": ("Egress", "egress", "to"),
        "ingress": ("Ingress", "ingress", "from"),
    }[direction]
    if not subject.is_pod:
        return True  # outside the cluster: no NetworkPolicy applies
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace", "") == subject.namespace
        and selects(p["spec"].get("podSelector"), subject.labels)
        and kind in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key) or []
            if not _port_matches(rule, port, protocol, destination):
                continue
            if not peers or any(
                _peer_matches(peer, policy["metadata"].get("namespace", ""), other) for peer in peers
            ):
                return True
    return False


def allowed(
    policies: Iterable[Mapping[str, Any]],
    source: Endpoint,
    destination: Endpoint,
    port: int | str,
    protocol: str = "TCP",
) -> bool:
    """Whether ``source`` may open a connection to ``destination`` on ``port`` (a number or its port name)."""
    policies = list(policies)
    number = destination.ports[port] if isinstance(port, str) else port
    return _allowed_by(
        policies, source, destination, "egress", number, protocol, destination
    ) and _allowed_by(policies, destination, source, "ingress", number, protocol, destination)
