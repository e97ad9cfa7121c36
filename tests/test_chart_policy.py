"""Policy scan of the rendered chart with checkov (pinned, in its own venv under .cache/venvs/):
no failed check, and every skip carries its reason next to it."""

from __future__ import annotations

import re

import pytest

from tests.support import helm as h

CI_VALUES = sorted((h.CHART / "ci").glob("*.yaml"))


@pytest.fixture(scope="module")
def report() -> dict:
    h.ensure_venv(h.CHECKOV)
    # Every values file of the matrix, one manifest stream (one checkov run: it starts slowly).
    streams = [h.helm(*h.template_args([values], release=f"r{i}")) for i, values in enumerate(CI_VALUES)]
    return h.checkov("\n---\n".join(streams))


def test_checkov_finds_no_failed_check(report: dict) -> None:
    failed = [
        f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in report["results"]["failed_checks"]
    ]
    assert failed == [], "\n".join(failed)
    summary = report["summary"]
    assert summary["passed"] > 500
    assert summary["parsing_errors"] == 0
    print(
        f"checkov: {summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped "
        f"(annotations), {summary['resource_count']} resources"
    )


def test_every_inline_skip_is_justified(report: dict) -> None:
    skipped = report["results"]["skipped_checks"]
    assert skipped, "the chart's annotated skips were not seen by checkov"
    for template in (h.CHART / "templates").rglob("*.yaml"):
        for match in re.finditer(r"checkov\.io/skip\d+:\s*(CKV\w+)=(.*)", template.read_text()):
            assert len(match.group(2).strip()) > 20, f"{template}: skip {match.group(1)} needs a reason"


def test_every_config_skip_has_a_reason_comment_above_it() -> None:
    lines = (h.CHART / ".checkov.yaml").read_text().splitlines()
    skips = [i for i, line in enumerate(lines) if re.match(r"\s*-\s*CKV", line)]
    assert skips
    for i in skips:
        check = lines[i].split("-", 1)[1].strip()
        assert lines[i - 1].strip().startswith("#"), f"{check} has no reason above it"
        reason = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            reason.append(lines[j])
            j -= 1
        assert check in "".join(reason), f"the comment above {check} should name it and say why"


def test_checkov_catches_a_privileged_container() -> None:
    manifest = h.helm(*h.template_args([h.CHART / "ci" / "defaults-values.yaml"]))
    broken = manifest.replace("allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", 1)
    report = h.checkov(broken)
    assert any(c["check_id"] == "CKV_K8S_20" for c in report["results"]["failed_checks"])


def test_worker_defaults_are_the_recommended_policy() -> None:
    """One set of defaults: values.yaml's workerDefaults is what `celery-fleet up` and the simulator run."""
    import yaml

    from celery_fleet.autoscale.policy import recommended_policy

    policy = recommended_policy()
    chart = yaml.safe_load((h.CHART / "values.yaml").read_text())["workerDefaults"]["autoscaling"]
    # Each chart key and the policy's field it renders (per pod: x concurrency, tests/test_chart.py).
    as_policy = {
        "targetBacklogPerProcess": policy.backlog_per_worker,
        "targetOldestAgeSeconds": policy.oldest_age_target_seconds or 0,
        "minReplicas": policy.min_replicas,
        "maxReplicas": policy.max_replicas,
        "activationBacklog": policy.activation_backlog,
        "pollingInterval": policy.sync_period_seconds,
        "cooldownPeriod": policy.cooldown_seconds,
        "behavior": policy.as_dict()["behavior"],
    }
    assert {key: chart[key] for key in as_policy} == as_policy
    # The chart's metric is celery_fleet_queue_backlog, waiting + held: the policy counts held too.
    assert policy.count_held
    # 0 means "derive from targetBacklogPerProcess"; a number here would be a second default.
    assert chart["targetBacklogPerWorker"] == 0
