"""Kubernetes' own HPA test tables, carried as data and run through ``celery_fleet.autoscale.policy``.

Source: Kubernetes v1.36.3, ``pkg/controller/podautoscaler/replica_calculator_test.go`` and
``horizontal_test.go``.  Every row is named after the upstream test (and sub-case) it comes
from and holds that case's numbers - metric values and targets in milli-units as upstream
writes them, so every division is the same floating-point division - and upstream's expected
result.  Only numbers are carried, no code.

How the rows run:

* **Replica calculator** rows: one metric's proposal.  External and Object metrics with a
  Value target, and Resource/Pods metrics in the plain case (every pod ready and reporting),
  all propose ``ceil(ratio x ready pods)`` outside the tolerance: :func:`latency_proposal`.
  For Resource rows the ratio is the integer utilization upstream computes
  (``100 * used / requested``) over the target.  AverageValue targets:
  :func:`backlog_proposal`.
* **Reconcile** rows (``horizontal_test.go``'s ``testCase``): the case's metric proposals
  into :meth:`Autoscaler.reconcile` with the case's min/max, ``spec.behavior`` (or none) and
  history (``recommendations: nil`` = a fresh HPA, ``[]`` = an HPA with no recent
  recommendation).  Where a case's metric is a Resource metric whose proposal depends on
  pod-level rules (a pod without a metric), the proposal upstream's calculator returns is
  given and the row tests what the controller does with it.
* **Normalisation** rows: the stabilization and rate-limit functions directly.
* ``horizontal_test.go``'s ``init()`` sets ``scaleUpLimitFactor = 8``; its rows run so too.

Not carried, because they test what does not exist here: the Resource/Pods-metric handling
of unready, not-yet-started, failed, deleted, "hot CPU" and metric-less pods and container
resources (both our metrics are External); Go integer-overflow guards
(``TestExternalPerPodMetricReplicaOverflow``, ``TestReplicaCalcScaleUpOverflow``,
``TestReplicaCalcExternalMetricUsageOverflow``: Python integers do not overflow and
``max_replicas`` clamps); conditions, events, selectors, status updates, metrics-monitor and
conflict-retry tests; the ``HPAConfigurableTolerance=false`` sub-case (on by default since
1.35, which is what is modelled); the storage slots of ``TestStoreScaleEvents`` (only its
"replicas changed in the period" figures decide anything).

The deliberate difference - zero is KEDA's - has its own table: those rows assert what
celery-fleet does instead *and* that it differs from upstream's expectation.
"""

# The upstream tables keep one case per row (a few wrap), as they read upstream.
# ruff: noqa: E501

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from celery_fleet.autoscale import policy as policy_module
from celery_fleet.autoscale.policy import (
    MAX_REPLICAS,
    MIN_REPLICAS,
    SCALE_DOWN_RATE,
    SCALE_UP_RATE,
    Autoscaler,
    Behavior,
    PolicyType,
    QueueMetrics,
    RatePolicy,
    ScalingPolicy,
    ScalingRules,
    SelectPolicy,
    Stamped,
    Tolerances,
    backlog_proposal,
    changed_within,
    default_scale_down,
    default_scale_up,
    latency_proposal,
    limit_with_behavior,
    limit_without_behavior,
    scale_down_limit,
    scale_up_limit,
    stabilize_with_behavior,
    stabilize_without_behavior,
)

NOW = 10_000.0
DEFAULT = Tolerances(0.1, 0.1)
MAX_INT64 = 2**63 - 1

#: Upstream's ScalingLimited condition reasons, as this module names the limits.
CONDITIONS = {
    "DesiredWithinRange": None,
    "ScaleUpLimit": SCALE_UP_RATE,
    "ScaleDownLimit": SCALE_DOWN_RATE,
    "TooManyReplicas": MAX_REPLICAS,
    "TooFewReplicas": MIN_REPLICAS,
}


def tol(down: float, up: float) -> Tolerances:
    """Upstream's ``Tolerances{scaleDown, scaleUp}``, in its field order."""
    return Tolerances(scale_down=down, scale_up=up)


def rules(
    pods: int = 0, pods_period: int = 0, percent: int = 0, percent_period: int = 0, window: int = 0
) -> ScalingRules:
    """Upstream's ``generateScalingRules(pods, podsPeriod, percent, percentPeriod, window)``."""
    policies = []
    if pods:
        policies.append(RatePolicy(PolicyType.PODS, pods, pods_period))
    if percent:
        policies.append(RatePolicy(PolicyType.PERCENT, percent, percent_period))
    return ScalingRules(window, tuple(policies), SelectPolicy.MAX)


def spread(changes: list[int], period: int) -> list[Stamped]:
    """Upstream's ``generateEventsUniformDistribution``: events in the middle of equal slices of
    the last ``period`` seconds (ages truncated to whole seconds, as its Duration conversion)."""
    segment = period / len(changes)
    return [
        Stamped(NOW - int(period - segment * (i + 1) + segment / 2), change)
        for i, change in enumerate(changes)
    ]


def history(*aged: tuple[int, float]) -> list[Stamped]:
    """``timestampedRecommendation{value, now - age}`` as (value, age in seconds)."""
    return [Stamped(NOW - age, value) for value, age in aged]


@pytest.fixture
def horizontal_test_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """horizontal_test.go's init(): scaleUpLimitFactor = 8."""
    monkeypatch.setattr(policy_module, "HPA_SCALE_UP_LIMIT_FACTOR", 8.0)


# -- replica_calculator_test.go ----------------------------------------------------------------


@dataclass(frozen=True)
class CalcRow:
    name: str
    kind: str  # "value": ratio x ready pods (Value targets, plain Resource/Pods); "average": AverageValue
    current: int
    usage: float
    target: float
    expected: int
    ready: int | None = None
    tolerances: Tolerances = DEFAULT


CALC_ROWS = (
    CalcRow("TestReplicaCalcScaleUp", "value", 3, 50, 30, 5),
    CalcRow("TestReplicaCalcContainerScaleUp", "value", 3, 50, 30, 5),
    CalcRow("TestReplicaCalcScaleUpCM", "value", 3, 20000, 15000, 4),
    CalcRow("TestReplicaCalcScaleUpCMObject", "value", 3, 20000, 15000, 4),
    CalcRow("TestReplicaCalcScaleUpCMObjectIgnoresUnreadyPods", "value", 3, 50000, 10000, 5, ready=1),
    CalcRow("TestReplicaCalcScaleUpCMExternal", "value", 1, 8600, 4400, 2),
    CalcRow("TestReplicaCalcScaleUpCMExternalIgnoresUnreadyPods", "value", 3, 8600, 4400, 2, ready=1),
    CalcRow("TestReplicaCalcScaleUpCMExternalNoLabels", "value", 1, 8600, 4400, 2),
    CalcRow("TestReplicaCalcScaleDown", "value", 5, 28, 50, 3),
    CalcRow("TestReplicaCalcContainerScaleDown", "value", 5, 28, 50, 3),
    CalcRow("TestReplicaCalcScaleDownCM", "value", 5, 12000, 20000, 3),
    CalcRow("TestReplicaCalcScaleDownCMObject", "value", 5, 12000, 20000, 3),
    CalcRow("TestReplicaCalcScaleDownCMExternal", "value", 5, 8600, 14334, 3),
    CalcRow("TestReplicaCalcTolerance", "value", 3, 102, 100, 3),
    CalcRow("TestReplicaCalcToleranceCM", "value", 3, 20666, 20000, 3),
    CalcRow("TestReplicaCalcToleranceCMObject", "value", 3, 20666, 20000, 3),
    CalcRow("TestReplicaCalcToleranceCMExternal", "value", 3, 8600, 8888, 3),
    CalcRow("TestReplicaCalcConfigurableTolerance/Outside of a 0% tolerance", "value", 3, 101, 100, 4,
            tolerances=tol(0.0, 0.0)),
    CalcRow("TestReplicaCalcConfigurableTolerance/Within a 200% scale-up tolerance", "value", 3, 190, 100, 3,
            tolerances=tol(0.1, 2.0)),
    CalcRow("TestReplicaCalcConfigurableTolerance/Outside 8% scale-up tolerance", "value", 3, 109, 100, 4,
            tolerances=tol(2.0, 0.08)),
    CalcRow("TestReplicaCalcConfigurableTolerance/Within a 36% scale-down tolerance", "value", 3, 65, 100, 3,
            tolerances=tol(0.36, 0.1)),
    CalcRow("TestReplicaCalcConfigurableTolerance/Outside a 34% scale-down tolerance", "value", 3, 65, 100, 2,
            tolerances=tol(0.34, 0.1)),
    CalcRow("TestReplicaCalcConfigurableToleranceCM", "value", 3, 20666, 20000, 4, tolerances=tol(0.1, 0.01)),
    CalcRow("TestReplicaCalcConfigurableToleranceCMObject", "value", 3, 20666, 20000, 4,
            tolerances=tol(0.1, 0.01)),
    CalcRow("TestReplicaCalcConfigurableToleranceCMExternal", "value", 3, 8900, 8800, 4,
            tolerances=tol(0.1, 0.01)),
    CalcRow("TestReplicaCalcScaleUpCMPerPodObject", "average", 3, 20000, 5000, 4),
    CalcRow("TestReplicaCalcScaleUpPerPodCMExternal", "average", 3, 8600, 2150, 4),
    CalcRow("TestReplicaCalcScaleDownPerPodCMObject", "average", 5, 6000, 2000, 3),
    CalcRow("TestReplicaCalcScaleDownPerPodCMExternal", "average", 5, 8600, 2867, 3),
    CalcRow("TestReplicaCalcTolerancePerPodCMObject", "average", 4, 20166, 5000, 4),
    CalcRow("TestReplicaCalcTolerancePerPodCMExternal", "average", 3, 8600, 2900, 3),
    CalcRow("TestReplicaCalcConfigurableTolerancePerPodCMObject", "average", 4, 20208, 5000, 5,
            tolerances=tol(0.1, 0.01)),
    CalcRow("TestReplicaCalcConfigurableTolerancePerPodCMExternal", "average", 3, 8600, 2800, 4,
            tolerances=tol(0.1, 0.01)),
    CalcRow("TestExternalPerPodMetricUsageOverflow", "average", 1, MAX_INT64, MAX_INT64, 1),
    # 10 pods, 150m used of 300m requested each (jittered requests summing to 3000m): 50 %;
    # targets int(100 * (1 / (2 * 0.9) + 0.01)) = 56 and int(100 * (1 / (2 * 0.9) + 0.004)) = 55.
    CalcRow("TestReplicaCalcComputedToleranceAlgImplementation/breach", "value", 10, 50, 56, 9),
    CalcRow("TestReplicaCalcComputedToleranceAlgImplementation/within", "value", 10, 50, 55, 10),
)  # fmt: skip


def proposal(
    kind: str, current: int, usage: float, target: float, tolerances: Tolerances, ready: int | None
) -> int:
    if kind == "average":
        return backlog_proposal(usage, target, current, tolerances)
    assert kind == "value", kind
    return latency_proposal(usage, target, current, tolerances, ready=ready)


@pytest.mark.parametrize("row", CALC_ROWS, ids=lambda r: r.name)
def test_replica_calculator_rows(row: CalcRow) -> None:
    got = proposal(row.kind, row.current, row.usage, row.target, row.tolerances, row.ready)
    assert got == row.expected


# -- horizontal_test.go: whole reconciles -----------------------------------------------------


@dataclass(frozen=True)
class Metric:
    kind: str  # "value", "average", "unreadable", or "given" (upstream's calculator result in usage)
    usage: float = 0.0
    target: float = 1.0
    ready: int | None = None


def given(replicas: int) -> Metric:
    return Metric("given", replicas)


UNREADABLE = Metric("unreadable")


@dataclass(frozen=True)
class ReconcileRow:
    name: str
    min: int
    max: int
    current: int
    metrics: tuple[Metric, ...]
    expected: int
    #: None: a fresh HPA (``recommendations: nil``); else (value, age s) pairs (``[]`` = none).
    recommendations: tuple[tuple[int, float], ...] | None = None
    #: ``spec.behavior`` directions (None: left out; both None: no ``spec.behavior``).
    scale_up: ScalingRules | None = None
    scale_down: ScalingRules | None = None


NONE: tuple[tuple[int, float], ...] = ()
CPU_50_OF_30 = Metric("value", 50, 30)  # 300m, 500m, 700m used of 1 CPU each, target 30 %
CPU_28_OF_50 = Metric("value", 28, 50)  # 100m, 300m, 500m, 250m, 250m of 1 CPU each, target 50 %
CPU_40_OF_30 = Metric("value", 40, 30)  # 300m, 400m, 500m of 1 CPU each, target 30 %
CPU_102_OF_100 = Metric("value", 102, 100)  # 1010m, 1030m, 1020m of 0.9, 1.0, 1.1 CPU, target 100 %

RECONCILE_ROWS = (
    ReconcileRow("TestScaleUp", 2, 6, 3, (CPU_50_OF_30,), 5),
    ReconcileRow("TestScaleUpDeployment", 2, 6, 3, (CPU_50_OF_30,), 5),
    ReconcileRow("TestScaleUpReplicaSet", 2, 6, 3, (CPU_50_OF_30,), 5),
    ReconcileRow("TestScaleUpCM", 2, 6, 3, (Metric("value", 20000, 15000),), 4),
    ReconcileRow("TestScaleUpCMObject", 2, 6, 3, (Metric("value", 20000, 15000),), 4),
    ReconcileRow("TestScaleUpPerPodCMObject", 2, 6, 3, (Metric("average", 40000, 10000),), 4),
    ReconcileRow("TestScaleUpCMExternal", 2, 6, 3, (Metric("value", 8600, 6666),), 4),
    ReconcileRow("TestScaleUpPerPodCMExternal", 2, 6, 3, (Metric("average", 8600, 2222),), 4),
    ReconcileRow("TestScaleDown", 2, 6, 5, (CPU_28_OF_50,), 3, NONE),
    ReconcileRow("TestScaleDownContainerResource", 2, 6, 5, (CPU_28_OF_50,), 3, NONE),
    ReconcileRow("TestScaleDownWithScalingRules", 2, 6, 5, (CPU_28_OF_50,), 3, NONE,
                 scale_up=rules(percent=100, percent_period=15, window=30)),
    ReconcileRow("TestScaleDownStabilizeInitialSize", 2, 6, 5, (CPU_28_OF_50,), 5),
    ReconcileRow("TestScaleDownCM", 2, 6, 5, (Metric("value", 12000, 20000),), 3, NONE),
    ReconcileRow("TestScaleDownCMObject", 2, 6, 5, (Metric("value", 12000, 20000),), 3, NONE),
    ReconcileRow("TestScaleDownPerPodCMObject", 2, 6, 5, (Metric("average", 60000, 20000),), 3, NONE),
    ReconcileRow("TestScaleDownCMExternal", 2, 6, 5, (Metric("value", 8600, 14400),), 3, NONE),
    ReconcileRow("TestScaleDownPerPodCMExternal", 2, 6, 5, (Metric("average", 8600, 3000),), 3, NONE),
    ReconcileRow("TestTolerance", 1, 5, 3, (CPU_102_OF_100,), 3),
    ReconcileRow("TestToleranceCM", 1, 5, 3, (Metric("value", 20333, 20000),), 3),
    ReconcileRow("TestToleranceCMObject", 1, 5, 3, (Metric("value", 20050, 20000),), 3),
    ReconcileRow("TestToleranceCMExternal", 2, 6, 4, (Metric("value", 8600, 8666),), 4),
    ReconcileRow("TestTolerancePerPodCMObject", 2, 6, 4, (Metric("average", 8600, 2200),), 4),
    ReconcileRow("TestTolerancePerPodCMExternal", 2, 6, 4, (Metric("average", 8600, 2200),), 4),
    ReconcileRow("TestConfigurableTolerance/Scaling up because of a 1% configurable tolerance",
                 1, 5, 3, (CPU_102_OF_100,), 4, scale_up=replace(default_scale_up(), tolerance=0.01)),
    ReconcileRow("TestConfigurableTolerance/No scale-down because of a 90% configurable tolerance",
                 1, 5, 3, (Metric("value", 30, 100),), 3, scale_down=replace(default_scale_down(), tolerance=0.9)),
    ReconcileRow("TestConfigurableTolerance/No scaling because of the large default tolerance",
                 1, 5, 3, (CPU_102_OF_100,), 3),
    # 10m, 95m, 10m of 0.9, 1.0, 1.1 CPU: 3 % against 90 %.
    ReconcileRow("TestMinReplicas", 2, 5, 3, (Metric("value", 3, 90),), 2, NONE),
    ReconcileRow("TestMinReplicasDesiredZero", 2, 5, 3, (Metric("value", 0, 90),), 2, NONE),
    ReconcileRow("TestTooFewReplicas", 3, 5, 2, (), 3),
    ReconcileRow("TestTooManyReplicas", 3, 5, 10, (), 5),
    # 8000m, 9500m, 1000m of 0.9, 1.0, 1.1 CPU: 616 % against 90 %.
    ReconcileRow("TestMaxReplicas", 2, 5, 3, (Metric("value", 616, 90),), 5),
    ReconcileRow("TestEmptyMetrics", 2, 6, 4, (UNREADABLE,), 4),
    ReconcileRow("TestEmptyCPURequest", 1, 5, 1, (UNREADABLE,), 1),
    ReconcileRow("TestEventCreated", 1, 5, 1, (Metric("value", 100, 50),), 2),
    ReconcileRow("TestEventNotCreated", 1, 5, 2, (Metric("value", 50, 50),), 2),
    # 100m, 200m, 300m of 0.1 CPU each: 200 % against 10 %, up by at most 700 % per 60 s.
    ReconcileRow("TestUpscaleCap", 1, 100, 3, (Metric("value", 200, 10),), 24,
                 scale_up=rules(percent=700, percent_period=60)),
    ReconcileRow("TestUpscaleCapGreaterThanMaxReplicas", 1, 20, 3, (Metric("value", 200, 10),), 20,
                 scale_up=rules(percent=700, percent_period=60)),
    # Spec 4, status 5 (a rolling update's surge): 5 ready pods at exactly 50 % of 50 %.
    ReconcileRow("TestMoreReplicasThanSpecNoScale", 1, 8, 4, (Metric("value", 50, 50, ready=5),), 4),
    # 4 pods, one without a metric: upstream's calculator proposes 3; the window keeps 4.
    ReconcileRow("TestStabilizeDownscale", 1, 5, 4, (given(3),), 4, ((10, 600), (4, 60))),
    ReconcileRow("TestComputedToleranceAlgImplementation/breach", 0, 1000, 10, (Metric("value", 50, 56),), 9, NONE),
    ReconcileRow("TestComputedToleranceAlgImplementation/within", 0, 1000, 10, (Metric("value", 50, 55),), 10,
                 NONE),
    ReconcileRow("TestScaleUpRCImmediately", 2, 6, 1, (), 2),
    ReconcileRow("TestScaleDownRCImmediately", 2, 5, 6, (), 5),
    ReconcileRow("TestScaleUpOneMetricInvalid", 2, 6, 3, (CPU_40_OF_30, UNREADABLE), 4),
    ReconcileRow("TestScaleUpOneMetricEmpty", 2, 6, 3, (CPU_40_OF_30, UNREADABLE), 4),
    ReconcileRow("TestNoScaleDownOneMetricInvalid", 2, 6, 5, (CPU_28_OF_50, UNREADABLE), 5, NONE),
    ReconcileRow("TestNoScaleDownOneMetricEmpty", 2, 6, 5, (CPU_28_OF_50, UNREADABLE), 5, NONE),
    ReconcileRow("TestScaleUpBothMetricsEmpty", 2, 6, 3, (UNREADABLE,), 3),
)  # fmt: skip


def row_policy(row: ReconcileRow) -> ScalingPolicy:
    behavior = None
    if row.scale_up is not None or row.scale_down is not None:
        behavior = Behavior(row.scale_up or default_scale_up(), row.scale_down or default_scale_down())
    return ScalingPolicy(min_replicas=row.min, max_replicas=row.max, behavior=behavior).validated()


def row_proposals(row: ReconcileRow, tolerances: Tolerances) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for i, m in enumerate(row.metrics):
        if m.kind == "unreadable":
            out[f"metric{i}"] = None
        elif m.kind == "given":
            out[f"metric{i}"] = int(m.usage)
        else:
            out[f"metric{i}"] = proposal(m.kind, row.current, m.usage, m.target, tolerances, m.ready)
    return out


@pytest.mark.usefixtures("horizontal_test_init")
@pytest.mark.parametrize("row", RECONCILE_ROWS, ids=lambda r: r.name)
def test_reconcile_rows(row: ReconcileRow) -> None:
    p = row_policy(row)
    seeded = None if row.recommendations is None else history(*row.recommendations)
    scaler = Autoscaler(p, recommendations=seeded)
    decision = scaler.reconcile(NOW, row.current, row_proposals(row, p.tolerances()))
    assert decision.desired == row.expected, decision.reason


AVERAGE_ONLY = [r for r in RECONCILE_ROWS if [m.kind for m in r.metrics] == ["average"]]


@pytest.mark.usefixtures("horizontal_test_init")
@pytest.mark.parametrize("row", AVERAGE_ONLY, ids=lambda r: r.name)
def test_reconcile_rows_through_decide(row: ReconcileRow) -> None:
    """The AverageValue rows once more through ``decide``, as the backlog metric: the same answer."""
    (metric,) = row.metrics
    p = replace(row_policy(row), backlog_per_worker=metric.target, oldest_age_target_seconds=None)
    seeded = None if row.recommendations is None else history(*row.recommendations)
    decision = Autoscaler(p, recommendations=seeded).decide(
        NOW, row.current, QueueMetrics(waiting=int(metric.usage))
    )
    assert decision.desired == row.expected, decision.reason


# -- horizontal_test.go: normalisation ----------------------------------------------------------


@pytest.mark.usefixtures("horizontal_test_init")
@pytest.mark.parametrize(
    ("name", "current", "desired", "minimum", "maximum", "expected", "condition"),
    [
        ("prenormalized desired replicas within range", 5, 7, 3, 8, 7, "DesiredWithinRange"),
        ("prenormalized desired replicas < minReplicas", 3, 1, 2, 8, 2, "TooFewReplicas"),
        ("prenormalized desired zeroed replicas within range", 1, 0, 0, 10, 0, "DesiredWithinRange"),
        (
            "maxReplicas is the limit because maxReplicas < scaleUpLimit",
            20,
            1000,
            1,
            10,
            10,
            "TooManyReplicas",
        ),
        # calculateScaleUpLimit(3) under the test binary's factor 8: 24.
        (
            "scaleUpLimit is the limit because scaleUpLimit < maxReplicas",
            3,
            1000,
            1,
            2000,
            24,
            "ScaleUpLimit",
        ),
    ],
)
def test_convert_desired_replicas_with_rules(
    name: str, current: int, desired: int, minimum: int, maximum: int, expected: int, condition: str
) -> None:
    """TestConvertDesiredReplicasWithRules."""
    assert limit_without_behavior(current, desired, minimum, maximum) == (expected, CONDITIONS[condition])


@pytest.mark.parametrize(
    ("name", "recommendations", "desired", "expected"),
    [
        ("empty log", (), 5, 5),
        ("stabilize", ((4, 120), (5, 60)), 3, 5),
        ("no stabilize", ((1, 120), (2, 60)), 3, 3),
        ("no stabilize - old recommendations", ((10, 600), (9, 540)), 3, 3),
        ("stabilize - old recommendations", ((10, 600), (4, 60), (5, 120), (9, 540)), 3, 5),
    ],
)
def test_normalize_desired_replicas(
    name: str, recommendations: tuple[tuple[int, float], ...], desired: int, expected: int
) -> None:
    """TestNormalizeDesiredReplicas: no spec.behavior, the controller's 5-minute window."""
    assert stabilize_without_behavior(history(*recommendations), NOW, desired, 300) == expected


@pytest.mark.parametrize(
    ("name", "recommendations", "current", "desired", "up_window", "down_window", "expected"),
    [
        ("empty recommendations for scaling down", (), 100, 5, 0, 0, 5),
        ("simple scale down stabilization", ((4, 120), (5, 60)), 100, 3, 0, 180, 5),
        ("simple scale up stabilization", ((4, 120), (5, 60)), 1, 7, 300, 0, 4),
        ("no scale down stabilization", ((1, 120), (2, 60)), 100, 3, 300, 0, 3),
        ("no scale up stabilization", ((4, 120), (5, 60)), 1, 3, 0, 300, 3),
        ("no scale down stabilization, reuse recommendation element", ((10, 600), (9, 540)), 100, 3, 0, 0, 3),
        ("no scale up stabilization, reuse recommendation element", ((10, 600), (9, 540)), 1, 100, 0, 0, 100),
        ("scale down stabilization, reuse one of obsolete recommendation element",
         ((10, 600), (4, 60), (5, 120), (9, 540)), 100, 3, 0, 180, 5),
        ("scale up stabilization, reuse one of obsolete recommendation element",
         ((10, 6000), (6, 60), (5, 120), (9, 180)), 1, 100, 300, 0, 5),
        ("scale up and down stabilization, do not scale up when prenormalized rec goes down",
         ((2, 6000), (3, 180)), 2, 1, 300, 300, 2),
        ("scale up and down stabilization, do not scale down when prenormalized rec goes up",
         ((2, 6000), (1, 180)), 2, 3, 300, 300, 2),
    ],
)  # fmt: skip
def test_normalize_desired_replicas_with_behavior(
    name: str,
    recommendations: tuple[tuple[int, float], ...],
    current: int,
    desired: int,
    up_window: int,
    down_window: int,
    expected: int,
) -> None:
    """TestNormalizeDesiredReplicasWithBehavior (stabilization only)."""
    behavior = Behavior(replace(default_scale_up(), stabilization_window_seconds=up_window),
                        replace(default_scale_down(), stabilization_window_seconds=down_window))  # fmt: skip
    assert stabilize_with_behavior(history(*recommendations), NOW, current, desired, behavior) == expected


@dataclass(frozen=True)
class RateRow:
    name: str
    current: int
    desired: int
    minimum: int
    maximum: int
    expected: int
    condition: str
    scale_up: ScalingRules | None = None
    scale_down: ScalingRules | None = None
    up_events: tuple[list[int], int] | None = None
    down_events: tuple[list[int], int] | None = None


EVENTS_1_5_9 = ([1, 5, 9], 120)
EVENTS_8_12_9_11 = ([8, 12, 9, 11], 120)

RATE_ROWS = (
    RateRow("prenormalized desired replicas within range", 5, 7, 3, 8, 7, "DesiredWithinRange"),
    RateRow("prenormalized desired replicas < minReplicas", 3, 1, 2, 8, 2, "TooFewReplicas"),
    RateRow("prenormalized desired replicas within range when minReplicas is 0", 1, 0, 0, 10, 0,
            "DesiredWithinRange"),
    RateRow("maxReplicas is the limit because maxReplicas < scaleUpLimit", 20, 1000, 1, 10, 10, "TooManyReplicas"),
    RateRow("desired replica count is more than the maximum replica count", 100, 1000, 100, 150, 150,
            "TooManyReplicas"),
    RateRow("scaleUpLimit is the limit because scaleUpLimit < maxReplicas with user policies", 3, 1000, 1, 2000, 4,
            "ScaleUpLimit", scale_up=rules(percent=1, percent_period=60)),
    RateRow("scaleDownLimit is the limit because scaleDownLimit > minReplicas with user defined policies",
            1000, 3, 3, 2000, 980, "ScaleDownLimit", scale_down=rules(pods=20, pods_period=60)),
    RateRow("scaleUp with default behavior", 10, 50, 1, 1000, 20, "ScaleUpLimit"),
    RateRow("scaleUp with pods policy larger than percent policy", 10, 500, 1, 1000, 110, "ScaleUpLimit",
            scale_up=rules(100, 60, 100, 60)),
    RateRow("scaleUp with percent policy larger than pods policy", 10, 500, 1, 1000, 20, "ScaleUpLimit",
            scale_up=rules(2, 60, 100, 60)),
    RateRow("scaleUp with spec MaxReplicas limitation with large pod policy", 10, 50, 1, 1000, 50,
            "DesiredWithinRange", scale_up=rules(100, 60)),
    RateRow("scaleUp with spec MaxReplicas limitation with large percent policy", 10, 50, 1, 1000, 50,
            "DesiredWithinRange", scale_up=rules(10000, 60)),
    RateRow("scaleUp with pod policy limitation", 10, 50, 1, 1000, 40, "ScaleUpLimit", scale_up=rules(30, 60)),
    RateRow("scaleUp with percent policy limitation", 10, 50, 1, 1000, 30, "ScaleUpLimit",
            scale_up=rules(percent=200, percent_period=60)),
    RateRow("scaleDown with percent policy larger than pod policy", 100, 2, 1, 1000, 80, "ScaleDownLimit",
            scale_down=rules(20, 60, 1, 60, 300)),
    RateRow("scaleDown with pod policy larger than percent policy", 100, 2, 1, 1000, 98, "ScaleDownLimit",
            scale_down=rules(2, 60, 1, 60, 300)),
    RateRow("scaleDown with spec MinReplicas=nil limitation with large pod policy", 10, 0, 1, 1000, 1,
            "TooFewReplicas", scale_down=rules(100, 60, window=300)),
    RateRow("scaleDown with spec MinReplicas limitation with large pod policy", 10, 0, 1, 1000, 1,
            "TooFewReplicas", scale_down=rules(100, 60, window=300)),
    RateRow("scaleDown with spec MinReplicas limitation with large percent policy", 10, 2, 5, 1000, 5,
            "TooFewReplicas", scale_down=rules(percent=100, percent_period=60, window=300)),
    RateRow("scaleDown with pod policy limitation", 10, 2, 1, 1000, 5, "ScaleDownLimit",
            scale_down=rules(5, 60, window=300)),
    RateRow("scaleDown with percent policy limitation", 10, 5, 1, 1000, 5, "DesiredWithinRange",
            scale_down=rules(percent=50, percent_period=60, window=300)),
    RateRow("scaleUp with spec MaxReplicas limitation with large pod policy and events", 100, 500, 1, 200, 200,
            "TooManyReplicas", scale_up=rules(300, 60), up_events=EVENTS_1_5_9),
    RateRow("scaleUp with spec MaxReplicas limitation with large percent policy and events", 100, 500, 1, 200, 200,
            "TooManyReplicas", scale_up=rules(percent=10000, percent_period=60), up_events=EVENTS_1_5_9),
    RateRow("scaleUp with currentReplicas limitation with rate.PeriodSeconds with a lot of recent scale up events",
            100, 500, 1, 1000, 100, "ScaleUpLimit", scale_up=rules(5, 120), up_events=EVENTS_1_5_9),
    RateRow("scaleUp with pod policy and previous scale up events", 100, 500, 1, 1000, 235, "ScaleUpLimit",
            scale_up=rules(150, 120), up_events=EVENTS_1_5_9),
    RateRow("scaleUp with percent policy and previous scale up events", 100, 500, 1, 1000, 255, "ScaleUpLimit",
            scale_up=rules(percent=200, percent_period=120), up_events=EVENTS_1_5_9),
    RateRow("scaleUp with percent policy and previous scale up and down events", 6, 24, 1, 1000, 16,
            "ScaleUpLimit", scale_up=rules(percent=300, percent_period=300), up_events=([4], 120),
            down_events=([2], 120)),
    RateRow("scaleDown with default policy and previous events", 10, 5, 1, 1000, 5, "DesiredWithinRange",
            down_events=EVENTS_1_5_9),
    RateRow("scaleDown with spec MinReplicas=nil limitation with large pod policy and previous events",
            100, 0, 1, 1000, 1, "TooFewReplicas", scale_down=rules(115, 120, window=300), down_events=EVENTS_1_5_9),
    RateRow("scaleDown with spec MinReplicas limitation with large pod policy and previous events",
            100, 0, 5, 1000, 5, "TooFewReplicas", scale_down=rules(130, 120, window=300), down_events=EVENTS_1_5_9),
    RateRow("scaleDown with spec MinReplicas limitation with large percent policy and previous events",
            100, 2, 5, 1000, 5, "TooFewReplicas", scale_down=rules(percent=100, percent_period=120, window=300),
            down_events=EVENTS_1_5_9),
    RateRow("scaleDown with pod policy limitation and previous events", 100, 2, 1, 1000, 100, "ScaleDownLimit",
            scale_down=rules(5, 120, window=300), down_events=EVENTS_1_5_9),
    RateRow("scaleDown with percent policy limitation and previous events", 100, 0, 1, 1000, 56, "ScaleDownLimit",
            scale_down=rules(percent=50, percent_period=120, window=300), down_events=([2, 4, 6], 120)),
    RateRow("scaleDown with percent policy and previous scale up and down events", 10, 1, 1, 1000, 6,
            "ScaleDownLimit", scale_down=rules(percent=50, percent_period=180), up_events=([2], 120),
            down_events=([4], 120)),
    RateRow("scaleDown with previous events preventing further scale down", 100, 0, 1, 1000, 100,
            "ScaleDownLimit", scale_down=rules(percent=10, percent_period=120, window=300),
            down_events=([10, 10, 10], 120)),
    RateRow("scaleDown with with previous events still allowing more scale down", 10, 5, 1, 1000, 5,
            "DesiredWithinRange", scale_down=rules(percent=1000, percent_period=120, window=300),
            down_events=([10, 10, 10], 120)),
    RateRow("check 'outdated' flag for events for one behavior for up", 100, 200, 1, 1000, 200,
            "DesiredWithinRange", scale_up=rules(1000, 60), up_events=EVENTS_8_12_9_11),
    RateRow("check that events were not marked 'outdated' for two different policies in the behavior for up",
            100, 200, 1, 1000, 200, "DesiredWithinRange", scale_up=rules(1000, 120, 100, 60),
            up_events=EVENTS_8_12_9_11),
    RateRow("check that events were marked 'outdated' for two different policies in the behavior for up",
            100, 200, 1, 1000, 200, "DesiredWithinRange", scale_up=rules(1000, 30, 100, 60),
            up_events=EVENTS_8_12_9_11),
    RateRow("check 'outdated' flag for events for one behavior for down", 100, 5, 1, 1000, 5,
            "DesiredWithinRange", scale_down=rules(1000, 60, window=300), down_events=EVENTS_8_12_9_11),
    RateRow("check that events were not marked 'outdated' for two different policies in the behavior for down",
            100, 5, 1, 1000, 5, "DesiredWithinRange", scale_down=rules(1000, 120, 100, 60, 300),
            down_events=EVENTS_8_12_9_11),
    RateRow("check that events were marked 'outdated' for two different policies in the behavior for down",
            100, 5, 1, 1000, 5, "DesiredWithinRange", scale_down=rules(1000, 30, 100, 60, 300),
            down_events=EVENTS_8_12_9_11),
)  # fmt: skip


@pytest.mark.parametrize("row", RATE_ROWS, ids=lambda r: r.name)
def test_scaling_with_rules(row: RateRow) -> None:
    """TestScalingWithRules (convertDesiredReplicasWithBehaviorRate: rate policies, min, max)."""
    behavior = Behavior(row.scale_up or default_scale_up(), row.scale_down or default_scale_down())
    up = spread(*row.up_events) if row.up_events else []
    down = spread(*row.down_events) if row.down_events else []
    got = limit_with_behavior(behavior, NOW, row.current, row.desired, row.minimum, row.maximum, up, down)
    assert got == (row.expected, CONDITIONS[row.condition])


def test_calculate_scale_up_and_down_limit_with_select_policy_min() -> None:
    """TestCalculateScaleUpLimitWithScalingRules and TestCalculateScaleDownLimitWithBehaviors:
    Pods 2 and Percent 50 per 60 s, selectPolicy Min, no events."""
    rules_min = ScalingRules(
        300, (RatePolicy(PolicyType.PODS, 2, 60), RatePolicy(PolicyType.PERCENT, 50, 60)), SelectPolicy.MIN
    )
    assert scale_up_limit(rules_min, NOW, 1, [], []) == 2
    assert scale_down_limit(rules_min, NOW, 5, [], []) == 3


@pytest.mark.parametrize(
    ("name", "events", "expected"),
    [
        ("empty entries with default behavior", (), 0),
        ("empty entries with two-policy-behavior", (), 0),
        ("one outdated entry to be kept untouched without behavior", ((7, 61),), 0),
        ("one outdated entry to be replaced with behavior", ((7, 61),), 0),
        ("one actual entry to be not touched with behavior", ((7, 58),), 7),
        ("two entries, one of them to be replaced", ((7, 61), (6, 59)), 6),
        ("replace one entry, use policies with different periods", ((8, 29), (6, 59), (7, 61), (9, 61)), 14),
        ("two entries, both actual", ((7, 58), (6, 59)), 13),
    ],
)
def test_store_scale_events_replicas_changed_in_period(
    name: str, events: tuple[tuple[int, float], ...], expected: int
) -> None:
    """TestStoreScaleEvents: replicas changed within a 60 s period (getReplicasChangePerPeriod)."""
    assert changed_within(history(*events), NOW, 60) == expected


# -- the deliberate difference: zero is KEDA's ---------------------------------------------------


@dataclass(frozen=True)
class ZeroRow:
    name: str
    min: int
    current: int
    metrics: QueueMetrics
    upstream: int
    ours: int
    why: str
    latency_target: float | None = None
    #: Upstream's ``recommendations: []`` (an HPA with no recent recommendation); else fresh.
    no_history: bool = False


ZERO_ROWS = (
    ZeroRow("TestZeroMinReplicasDesiredZero", 0, 3, QueueMetrics(waiting=0), 0, 1,
            "an idle group keeps one worker until KEDA's cooldown takes it to zero", no_history=True),
    ZeroRow("TestScaleDownToZeroCMExternal", 0, 5, QueueMetrics(waiting=0), 0, 1,
            "an idle group keeps one worker until KEDA's cooldown takes it to zero", no_history=True),
    ZeroRow("TestZeroReplicas", 3, 0, QueueMetrics(waiting=0), 0, 3,
            "KEDA brings a group below minReplicaCount back to it; the HPA pauses at 0"),
    ZeroRow("TestManualScaleToZeroDisablesHPA", 1, 0, QueueMetrics(waiting=0), 0, 1,
            "KEDA brings a group below minReplicaCount back to it; the HPA pauses at 0"),
    ZeroRow("TestScaleUpFromZeroCMObject/HPAScaleToZero=true", 0, 0,
            QueueMetrics(waiting=0, oldest_age_seconds=20000), 2, 1,
            "KEDA activates a group at 0 to max(min, 1); the HPA takes it from there", latency_target=15000),
    ZeroRow("TestScaleUpFromZeroWithoutCondition", 0, 0, QueueMetrics(waiting=0, oldest_age_seconds=20000), 0, 1,
            "KEDA activates a group at 0 on activity, with or without a ScaledToZero condition",
            latency_target=15000),
)  # fmt: skip


@pytest.mark.parametrize("row", ZERO_ROWS, ids=lambda r: r.name)
def test_zero_is_kedas(row: ZeroRow) -> None:
    p = ScalingPolicy(
        min_replicas=row.min,
        max_replicas=6,
        oldest_age_target_seconds=row.latency_target,
        cooldown_seconds=300,
    ).validated()
    decision = Autoscaler(p, recommendations=[] if row.no_history else None).decide(
        NOW, row.current, row.metrics
    )
    assert decision.desired == row.ours, decision.reason
    assert decision.desired != row.upstream, f"no longer a difference: {row.why}"


def test_every_row_name_is_an_upstream_test_name() -> None:
    names = [r.name for r in (*CALC_ROWS, *RECONCILE_ROWS, *ZERO_ROWS)]
    assert all(n.startswith("Test") for n in names)
    assert len(names) == len(set(names))
