"""The scaling policy against the Kubernetes HPA documentation's worked examples and the
divergences found in issue #17.

Pure logic: no processes.  Sources of the table cases (kubernetes.io, "Horizontal Pod
Autoscaling", sections "Algorithm details", "Configurable scaling behavior",
"Scaling policies", "Stabilization window", "Default Behavior", "Example: limit scale
down rate", "Example: disable scale down") and the controller's code they describe.  The
controller's own test tables are in ``test_autoscale_hpa_upstream.py``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from celery_fleet.autoscale.policy import (
    Autoscaler,
    Behavior,
    Cause,
    PolicyError,
    PolicyType,
    QueueMetrics,
    RatePolicy,
    ScalingPolicy,
    ScalingRules,
    SelectPolicy,
    Stamped,
    Tolerances,
    backlog_proposal,
    desired_replicas,
    latency_proposal,
    policy_from_hpa_defaults,
    policy_from_keda_defaults,
    recommended_policy,
)

NO_LIMITS = ScalingRules(0, (RatePolicy(PolicyType.PERCENT, 1000, 15),))


def policy(**overrides: object) -> ScalingPolicy:
    """A policy with no stabilization and (practically) no rate limits unless asked for."""
    values: dict[str, object] = {
        "backlog_per_worker": 5.0,
        "min_replicas": 1,
        "max_replicas": 1000,
        "behavior": Behavior(scale_up=NO_LIMITS, scale_down=NO_LIMITS),
        "cooldown_seconds": 300.0,
    }
    values.update(overrides)
    return ScalingPolicy(**values).validated()  # type: ignore[arg-type]


def backlog(n: int) -> QueueMetrics:
    return QueueMetrics(waiting=n)


# -- "Algorithm details": desired = ceil(current * currentMetric / desiredMetric) ---------


@pytest.mark.parametrize(
    ("current", "metric", "target", "expected"),
    [
        (1, 0.200, 0.100, 2),  # "current metric value is 200m, desired 100m: replicas doubled"
        (4, 0.050, 0.100, 2),  # "current value is instead 50m, you'll halve the number of replicas"
        (10, 0.105, 0.100, 10),  # ratio 1.05: within the 0.1 tolerance, no scaling
        (10, 0.095, 0.100, 10),  # ratio 0.95: within tolerance
        (10, 0.120, 0.100, 12),  # ratio 1.2: outside, ceil(10 * 1.2)
        (3, 0.111, 0.100, 4),  # ratio 1.11: ceil(3 * 1.11)
    ],
)
def test_value_target_ratio_rule(current: int, metric: float, target: float, expected: int) -> None:
    assert latency_proposal(metric, target, current, 0.1) == expected


@pytest.mark.parametrize(
    ("current", "backlog_total", "expected"),
    [
        (1, 10, 2),  # 10 messages, 5 per worker
        (2, 10, 2),  # on target
        (4, 21, 4),  # 21 / (5 * 4) = 1.05: within tolerance
        (4, 23, 5),  # 1.15: ceil(23 / 5)
        (10, 0, 0),  # nothing to do: the HPA proposes 0 (minReplicas clamps later)
        (0, 7, 2),  # AverageValue does not depend on the current count
    ],
)
def test_external_average_value_target(current: int, backlog_total: int, expected: int) -> None:
    assert backlog_proposal(backlog_total, 5.0, current, 0.1) == expected


def test_the_largest_metric_proposal_wins() -> None:
    p = policy(oldest_age_target_seconds=10.0)
    # backlog proposes ceil(10/5) = 2; latency 30 s over a 10 s target proposes ceil(2 * 3) = 6
    decision = desired_replicas(p, 2, QueueMetrics(waiting=10, oldest_age_seconds=30.0))
    assert decision.desired == 6
    assert decision.inputs["proposals"] == {"backlog": 2, "latency": 6}
    assert "latency" in decision.reason


# -- "Default Behavior": scale up by max(100 %, 4 pods) per 15 s, down 100 % per 15 s -----


@pytest.mark.parametrize(
    ("current", "wanted", "expected"),
    [
        (1, 20, 5),  # 4 pods beat 100 % of 1
        (2, 20, 6),
        (4, 20, 8),  # both policies allow 8
        (10, 50, 20),  # 100 % beats 4 pods
        (10, 15, 15),  # within the limit
    ],
)
def test_default_behavior_scale_up_rate(current: int, wanted: int, expected: int) -> None:
    """spec.behavior given with its defaults filled in by the API server."""
    p = policy(behavior=Behavior(), max_replicas=100)
    assert desired_replicas(p, current, backlog(wanted * 5)).desired == expected


@pytest.mark.parametrize(
    ("current", "expected"),
    [(1, 4), (2, 4), (3, 6), (10, 20)],  # issue #17: the presets gave 5, 6, 7 from 1, 2, 3
)
def test_without_behavior_scale_up_is_capped_at_twice_or_four(current: int, expected: int) -> None:
    """No spec.behavior (a plain HPA, or the one KEDA creates): max(2 x current, 4)."""
    for preset in (policy_from_hpa_defaults(max_replicas=100), policy_from_keda_defaults(max_replicas=100)):
        assert preset.behavior is None
        decision = desired_replicas(preset, current, backlog(10_000))
        assert decision.desired == expected, preset.name
        assert decision.limits == ("scale-up rate limit",)


def test_default_behavior_counts_what_was_added_in_the_period() -> None:
    scaler = Autoscaler(policy(behavior=Behavior(), max_replicas=100))
    assert scaler.decide(0.0, 1, backlog(500)).desired == 5
    # 10 s later, same period: the period started at 1 replica, so the limit is still 5.
    held = scaler.decide(10.0, 5, backlog(500))
    assert held.desired == 5
    assert "rate limit" in held.reason
    # After the 15 s period: from 5, max(+100 %, +4) = 10.
    assert scaler.decide(16.0, 5, backlog(500)).desired == 10


def test_without_behavior_the_cap_has_no_memory_of_the_period() -> None:
    scaler = Autoscaler(policy_from_hpa_defaults(5.0, max_replicas=100))
    assert scaler.decide(0.0, 1, backlog(500)).desired == 4
    assert scaler.decide(10.0, 4, backlog(500)).desired == 8  # no period: 2 x 4 at once


def test_default_scale_down_waits_for_the_300s_window() -> None:
    scaler = Autoscaler(policy_from_hpa_defaults(5.0, max_replicas=100))
    assert scaler.decide(0.0, 10, backlog(50)).desired == 10  # on target: records 10
    later = scaler.decide(60.0, 10, backlog(5))  # proposes 1, but 10 is in the window
    assert later.desired == 10
    assert "stabilization" in later.reason
    assert scaler.decide(200.0, 10, backlog(5)).desired == 10
    # Past 300 s the 10 has left the window; 100 % per 15 s lets it go straight to 1.
    assert scaler.decide(301.0, 10, backlog(5)).desired == 1


# -- "Stabilization window" ---------------------------------------------------------------


def test_scale_down_stabilization_takes_the_max_of_the_window() -> None:
    p = policy(behavior=Behavior(scale_up=NO_LIMITS, scale_down=ScalingRules(60, NO_LIMITS.policies)))
    scaler = Autoscaler(p)
    assert scaler.decide(0.0, 8, backlog(40)).desired == 8
    assert scaler.decide(20.0, 8, backlog(30)).desired == 8  # max(8, 6)
    assert scaler.decide(61.0, 8, backlog(10)).desired == 6  # the 8 aged out, the 6 did not
    assert scaler.decide(82.0, 6, backlog(10)).desired == 2


def test_scale_up_stabilization_takes_the_min_of_the_window() -> None:
    p = policy(behavior=Behavior(scale_up=ScalingRules(60, NO_LIMITS.policies), scale_down=NO_LIMITS))
    scaler = Autoscaler(p)
    assert scaler.decide(0.0, 2, backlog(10)).desired == 2
    assert scaler.decide(30.0, 2, backlog(40)).desired == 2  # min(2, 8): a spike is not enough
    assert scaler.decide(61.0, 2, backlog(40)).desired == 8  # sustained for a window: scale


# -- "Scaling policies" and "Example: limit scale down rate" ------------------------------


def docs_scale_down(select: SelectPolicy = SelectPolicy.MAX) -> ScalingPolicy:
    rules = ScalingRules(
        0, (RatePolicy(PolicyType.PODS, 4, 60), RatePolicy(PolicyType.PERCENT, 10, 60)), select
    )
    return policy(behavior=Behavior(scale_up=NO_LIMITS, scale_down=rules))


def test_docs_scale_down_policies_80_replicas_to_10() -> None:
    """Docs: 80 replicas scaled to 10: first 8 go (10 %), then at 72, 7.2 rounds up to 8."""
    scaler = Autoscaler(docs_scale_down())
    assert scaler.decide(0.0, 80, backlog(50)).desired == 72
    assert scaler.decide(30.0, 72, backlog(50)).desired == 72  # same 60 s period: no more
    assert scaler.decide(61.0, 72, backlog(50)).desired == 64
    # "When the number of replicas falls below 40 the first policy (Pods) is applied."
    assert Autoscaler(docs_scale_down()).decide(0.0, 30, backlog(50)).desired == 26
    assert Autoscaler(docs_scale_down()).decide(0.0, 40, backlog(50)).desired == 36


def test_docs_select_policy_min_limits_to_the_smallest_change() -> None:
    """Docs: Percent 10 + Pods 5 per 60 s with selectPolicy Min: at most 5 pods a minute."""
    rules = ScalingRules(
        0, (RatePolicy(PolicyType.PERCENT, 10, 60), RatePolicy(PolicyType.PODS, 5, 60)), SelectPolicy.MIN
    )
    p = policy(behavior=Behavior(scale_up=NO_LIMITS, scale_down=rules))
    assert desired_replicas(p, 100, backlog(50)).desired == 95
    assert desired_replicas(p, 20, backlog(5)).desired == 18  # 10 % of 20 is the smaller change


def test_docs_percent_10_per_60s_scale_down() -> None:
    rules = ScalingRules(0, (RatePolicy(PolicyType.PERCENT, 10, 60),))
    scaler = Autoscaler(policy(behavior=Behavior(scale_up=NO_LIMITS, scale_down=rules)))
    assert scaler.decide(0.0, 50, backlog(0)).desired == 45
    assert scaler.decide(59.0, 45, backlog(0)).desired == 45
    assert scaler.decide(61.0, 45, backlog(0)).desired == 40  # int(45 * 0.9) = 40


def test_docs_disable_scale_down() -> None:
    rules = ScalingRules(0, (), SelectPolicy.DISABLED)
    p = policy(behavior=Behavior(scale_up=NO_LIMITS, scale_down=rules))
    assert desired_replicas(p, 10, backlog(0)).desired == 10
    assert desired_replicas(p, 10, backlog(100)).desired == 20  # scale-up is unaffected


def test_percent_scale_up_rounds_up() -> None:
    rules = ScalingRules(0, (RatePolicy(PolicyType.PERCENT, 50, 60),))
    p = policy(behavior=Behavior(scale_up=rules, scale_down=NO_LIMITS))
    assert desired_replicas(p, 3, backlog(100)).desired == 5  # ceil(3 * 1.5)


# -- min / max ------------------------------------------------------------------------------


def test_max_replicas_clamps_scale_up() -> None:
    decision = desired_replicas(policy(max_replicas=10), 4, backlog(1000))
    assert decision.desired == 10
    assert "max_replicas" in decision.reason


def test_min_replicas_clamps_scale_down() -> None:
    decision = desired_replicas(policy(min_replicas=3), 8, backlog(0))
    assert decision.desired == 3
    assert "min_replicas" in decision.reason


@pytest.mark.parametrize(("current", "expected"), [(15, 10), (1, 3)])
def test_out_of_range_current_is_corrected_first(current: int, expected: int) -> None:
    assert desired_replicas(policy(min_replicas=3, max_replicas=10), current, backlog(25)).desired == expected


# -- scale to and from zero (KEDA activation and cooldown) --------------------------------


def test_scale_from_zero_on_any_backlog() -> None:
    p = policy(min_replicas=0)
    assert desired_replicas(p, 0, backlog(0)).desired == 0
    decision = desired_replicas(p, 0, backlog(1))
    assert decision.desired == 1
    assert "activated" in decision.reason


def test_scale_from_zero_respects_the_activation_threshold() -> None:
    p = policy(min_replicas=0, activation_backlog=5.0)
    assert desired_replicas(p, 0, backlog(5)).desired == 0
    assert desired_replicas(p, 0, backlog(6)).desired == 1


def test_scale_from_zero_on_latency_alone() -> None:
    p = policy(min_replicas=0, activation_backlog=100.0, oldest_age_target_seconds=10.0)
    assert desired_replicas(p, 0, QueueMetrics(waiting=1, oldest_age_seconds=5.0)).desired == 0
    assert desired_replicas(p, 0, QueueMetrics(waiting=1, oldest_age_seconds=11.0)).desired == 1


def test_from_zero_with_a_minimum_goes_to_the_minimum() -> None:
    assert desired_replicas(policy(min_replicas=2), 0, backlog(0)).desired == 2


def test_back_to_zero_only_after_the_cooldown() -> None:
    scaler = Autoscaler(policy(min_replicas=0, cooldown_seconds=60.0))
    assert scaler.decide(0.0, 3, backlog(15)).desired == 3
    # Idle: the HPA part keeps one worker (its minReplicas is max(min, 1))...
    assert scaler.decide(10.0, 3, backlog(0)).desired == 1
    assert scaler.decide(59.0, 1, backlog(0)).desired == 1
    # ...until the queue has been idle for the cooldown (since t=0, the last active sample).
    decision = scaler.decide(61.0, 1, backlog(0))
    assert decision.desired == 0
    assert "cooldown" in decision.reason
    assert scaler.decide(70.0, 0, backlog(0)).desired == 0
    assert scaler.decide(80.0, 0, backlog(2)).desired == 1


def test_activity_resets_the_cooldown() -> None:
    scaler = Autoscaler(policy(min_replicas=0, cooldown_seconds=60.0))
    scaler.decide(0.0, 1, backlog(3))
    scaler.decide(50.0, 1, backlog(1))  # still active at 50
    assert scaler.decide(100.0, 1, backlog(0)).desired == 1
    assert scaler.decide(111.0, 1, backlog(0)).desired == 0


# -- held messages and the presets ----------------------------------------------------------


def test_held_messages_keep_busy_workers() -> None:
    busy = QueueMetrics(waiting=0, held=6)
    ours = policy(backlog_per_worker=2.0, min_replicas=0)
    assert desired_replicas(ours, 3, busy).desired == 3
    # KEDA's redis scaler sees an empty list.  With a minimum of 1, the HPA proposes 0 and,
    # once its 300 s window has no higher recommendation, scales the busy fleet to 1...
    scaler = Autoscaler(policy_from_keda_defaults(2.0, min_replicas=1))
    first = scaler.decide(0.0, 3, busy)
    assert (first.proposal, first.desired) == (0, 3)
    assert scaler.decide(301.0, 3, busy).desired == 1
    # ...and with KEDA's default minimum of 0 nothing ever looked active: to zero at the next poll.
    keda = Autoscaler(policy_from_keda_defaults(2.0))
    assert keda.decide(0.0, 3, busy).desired == 3
    assert keda.decide(30.0, 3, busy).cause is Cause.COOLED_DOWN


def test_presets_are_valid_and_match_the_defaults() -> None:
    keda = policy_from_keda_defaults()
    hpa = policy_from_hpa_defaults()
    ours = recommended_policy()
    assert (keda.cooldown_seconds, keda.sync_period_seconds, keda.min_replicas) == (300.0, 30.0, 0)
    assert keda.backlog_per_worker == 5.0
    assert not keda.count_held
    assert hpa.min_replicas == 1
    assert hpa.sync_period_seconds == 15.0
    for p in (keda, hpa):
        assert p.behavior is None  # neither sets spec.behavior
        assert p.downscale_stabilization_seconds == 300
        assert p.tolerances() == Tolerances(0.1, 0.1)
        assert p.as_dict()["behavior"] is None
    assert keda.initial_cooldown_seconds == 0.0
    assert ours.count_held
    assert ours.as_dict()["behavior"]["scaleUp"]["policies"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"backlog_per_worker": 0.0},
        {"min_replicas": -1},
        {"min_replicas": 5, "max_replicas": 4},
        {"max_replicas": 0},
        {"tolerance": 1.5},
        {"oldest_age_target_seconds": 0.0},
        {"behavior": Behavior(scale_up=ScalingRules(4000, NO_LIMITS.policies))},
        {"behavior": Behavior(scale_up=ScalingRules(0, ()))},
        {"behavior": Behavior(scale_up=ScalingRules(0, (RatePolicy(PolicyType.PODS, 0, 15),)))},
        {"behavior": Behavior(scale_down=ScalingRules(0, NO_LIMITS.policies, tolerance=-0.1))},
        {"initial_cooldown_seconds": -1.0},
        {"downscale_stabilization_seconds": 4000},
    ],
)
def test_invalid_policies_are_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(PolicyError):
        policy(**overrides)


def test_decision_log_line_names_its_inputs() -> None:
    decision = desired_replicas(policy(), 2, QueueMetrics(waiting=7, held=3, oldest_age_seconds=12.5))
    line = decision.log_line("default")
    for part in ("group=default", "current=2", "desired=2", "backlog=10", "oldest_age=12.5", "reason="):
        assert part in line


# -- issue #17: the tolerance boundary, the first recommendation, per-direction tolerances --


def test_the_tolerance_boundary_is_inclusive_as_in_the_controller() -> None:
    """10 workers, backlog 55, 5 per worker: ratio 1.1 exactly, within 0.1 (|1 - 1.1| is
    0.10000000000000009 in floating point, which the controller never computes)."""
    assert backlog_proposal(55, 5.0, 10, 0.1) == 10
    assert latency_proposal(11.0, 10.0, 10, 0.1) == 10  # ratio 1.1
    assert latency_proposal(9.0, 10.0, 10, 0.1) == 10  # ratio 0.9
    assert desired_replicas(policy(), 10, backlog(55)).desired == 10
    assert desired_replicas(policy(), 10, backlog(56)).desired == 12  # just outside


def test_a_fresh_autoscaler_records_the_current_count_first() -> None:
    """A new HPA's first sync records the current replicas (recordInitialRecommendation)."""
    # With a 60 s scale-up window, 2 -> 8 waits: the first recommendation is 2.
    up_window = policy(behavior=Behavior(scale_up=ScalingRules(60, NO_LIMITS.policies), scale_down=NO_LIMITS))
    scaler = Autoscaler(up_window)
    assert scaler.decide(0.0, 2, backlog(40)).desired == 2
    assert scaler.recommendations[0] == Stamped(0.0, 2)
    # The HPA's defaults hold 10 replicas for the 300 s window although 1 is proposed.
    hpa = Autoscaler(policy_from_hpa_defaults(5.0, max_replicas=20))
    held = hpa.decide(0.0, 10, backlog(5))
    assert (held.proposal, held.desired) == (1, 10)
    assert "scale-down stabilization" in held.limits
    assert hpa.decide(300.0, 10, backlog(5)).desired == 10  # the window keeps its edge (>=)
    assert hpa.decide(301.0, 10, backlog(5)).desired == 1
    # A history given as empty (an HPA that has run a while) does not hold anything.
    assert (
        Autoscaler(policy_from_hpa_defaults(5.0), recommendations=[]).decide(0.0, 10, backlog(5)).desired == 1
    )


def test_per_direction_tolerances_from_the_behavior() -> None:
    tight_up = Behavior(
        scale_up=replace(NO_LIMITS, tolerance=0.01), scale_down=replace(NO_LIMITS, tolerance=0.5)
    )
    p = policy(behavior=tight_up)
    assert p.tolerances() == Tolerances(scale_down=0.5, scale_up=0.01)
    assert desired_replicas(p, 10, backlog(52)).desired == 11  # ratio 1.04 > 1.01
    assert desired_replicas(p, 10, backlog(26)).desired == 10  # ratio 0.52 >= 0.5: holds
    assert desired_replicas(p, 10, backlog(24)).desired == 5
    assert p.as_dict()["behavior"]["scaleUp"]["tolerance"] == 0.01
    # Without spec.behavior only the cluster-wide tolerance exists.
    assert policy(behavior=None, tolerance=0.2).tolerances() == Tolerances(0.2, 0.2)


def test_the_value_metric_multiplies_the_ready_workers() -> None:
    """GetExternalMetricReplicas: ceil(ratio x ready pods); starting workers do not count."""
    p = policy(oldest_age_target_seconds=10.0)
    metrics = QueueMetrics(waiting=0, oldest_age_seconds=30.0)
    assert desired_replicas(p, 4, metrics).inputs["proposals"]["latency"] == 12
    assert desired_replicas(p, 4, metrics, ready=1).inputs["proposals"]["latency"] == 3


# -- issue #17: a metric that cannot be read -------------------------------------------------


def test_an_unreadable_metric_proposes_nothing_and_blocks_scale_down() -> None:
    p = policy(oldest_age_target_seconds=10.0)
    # The age cannot be read; the backlog proposes 1: no scale-down while a metric is missing.
    held = desired_replicas(p, 5, QueueMetrics(waiting=5, oldest_age_seconds=None))
    assert (held.desired, held.cause) == (5, Cause.MISSING_METRIC)
    assert held.inputs["proposals"] == {"backlog": 1, "latency": None}
    assert "no scale-down" in held.summary
    # ...but scaling up on the readable one goes ahead.
    up = desired_replicas(p, 5, QueueMetrics(waiting=50, oldest_age_seconds=None))
    assert (up.desired, up.cause) == (10, Cause.METRICS)
    # The backlog cannot be read; the age says scale up.
    assert desired_replicas(p, 2, QueueMetrics(waiting=None, oldest_age_seconds=40.0)).desired == 8
    # Nothing can be read: nothing changes.
    blind = desired_replicas(p, 3, QueueMetrics(waiting=None, oldest_age_seconds=None))
    assert (blind.desired, blind.cause) == (3, Cause.NO_METRICS)


def test_an_unreadable_age_is_not_zero_seconds() -> None:
    """An unreadable age once read as 0 s: a low backlog then scaled down. Now it holds."""
    p = policy(oldest_age_target_seconds=10.0, backlog_per_worker=2.0)
    assert desired_replicas(p, 4, QueueMetrics(waiting=2, oldest_age_seconds=0.0)).desired == 1
    assert desired_replicas(p, 4, QueueMetrics(waiting=2, oldest_age_seconds=None)).desired == 4


def test_keda_does_not_scale_to_zero_while_a_metric_is_missing() -> None:
    p = policy(min_replicas=0, cooldown_seconds=60.0, oldest_age_target_seconds=10.0)
    scaler = Autoscaler(p)
    scaler.decide(0.0, 1, backlog(3))
    assert scaler.decide(100.0, 1, QueueMetrics(waiting=0, oldest_age_seconds=None)).desired == 1
    assert scaler.decide(110.0, 1, QueueMetrics(waiting=0)).desired == 0  # readable again: idle


def test_keda_initial_cooldown_when_nothing_was_ever_active() -> None:
    """LastActiveTime unset: KEDA scales to zero once initialCooldownPeriod (0) has passed."""
    scaler = Autoscaler(policy(min_replicas=0, cooldown_seconds=300.0))
    assert scaler.decide(0.0, 2, backlog(0)).desired == 1  # same instant as the start: HPA part
    assert scaler.decide(5.0, 1, backlog(0)).desired == 0
    patient = Autoscaler(policy(min_replicas=0, initial_cooldown_seconds=60.0))
    patient.decide(0.0, 1, backlog(0))
    assert patient.decide(30.0, 1, backlog(0)).desired == 1
    assert patient.decide(61.0, 1, backlog(0)).desired == 0


# -- plain words -------------------------------------------------------------------------------


def test_every_decision_says_its_step_and_reason_in_plain_words() -> None:
    p = recommended_policy(2.0, oldest_age_target_seconds=30.0, min_replicas=1, max_replicas=4)
    up = desired_replicas(p, 1, QueueMetrics(waiting=30))
    assert up.summary == "1 → 4 workers (backlog 30, 2 per worker asks for 15; capped at the maximum 4)"
    assert (up.cause, up.metric, up.proposal, up.limits) == (Cause.METRICS, "backlog", 15, ("max_replicas",))
    scaler = Autoscaler(p)
    scaler.decide(0.0, 4, QueueMetrics(waiting=8))
    held = scaler.decide(10.0, 4, QueueMetrics(waiting=0))
    assert (
        held.summary
        == "stays at 4 workers (backlog 0, 2 per worker asks for 0; waiting out the 30 s scale-down window)"
    )
    late = desired_replicas(p, 2, QueueMetrics(waiting=1, oldest_age_seconds=90.0))
    assert (
        late.summary == "2 → 4 workers (oldest message 90 s, target 30 s asks for 6; capped at the maximum 4)"
    )
    steady = desired_replicas(p, 2, QueueMetrics(waiting=4))
    assert steady.summary == "stays at 2 workers (backlog 4, 2 per worker: on target)"
    zero = policy(min_replicas=0, cooldown_seconds=60.0)
    assert desired_replicas(zero, 0, backlog(3)).summary == (
        "0 → 1 worker (activated: backlog 3 on a group with no workers)"
    )
    cool = Autoscaler(zero)
    cool.decide(0.0, 1, backlog(3))
    assert cool.decide(61.0, 1, backlog(0)).summary == "1 → 0 workers (idle for 61 s, cooldown 60 s)"
    assert desired_replicas(zero, 0, backlog(0)).summary == "stays at 0 workers (idle)"
    assert (
        desired_replicas(policy(min_replicas=3), 1, backlog(0)).summary
        == "1 → 3 workers (below the minimum 3)"
    )
