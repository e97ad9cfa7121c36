"""The scaling policy: desired workers per queue, with the Kubernetes HPA v2 algorithm.

Pure, and stateful only through :class:`Autoscaler` (the recommendation and scale-event
history the HPA controller keeps per target).  What it reproduces, step by step, from the
HPA controller (``pkg/controller/podautoscaler``: ``horizontal.go``, ``replica_calculator.go``,
checked against Kubernetes v1.36.3):

1. Out-of-range counts are corrected first (``current > max`` → max, ``current < min`` →
   min), without reading any metric.
2. Per metric, a proposal.  A metric is *within tolerance* when
   ``1 - scale_down_tolerance <= ratio <= 1 + scale_up_tolerance`` (the HPA's two-sided test,
   boundaries included); then it proposes ``current``.

   * **Backlog** (``celery_fleet_queue_backlog`` = waiting + held messages) is an *External
     metric with an AverageValue target*: ``ratio = backlog / (target * current)``; outside
     the tolerance it proposes ``ceil(backlog / target)``.  This is what a KEDA trigger asks of
     the HPA.
   * **Latency** (``celery_fleet_queue_oldest_age_seconds``), optional, is an *External metric
     with a Value target*: ``ratio = age / target``; outside the tolerance it proposes
     ``ceil(ratio * ready)``, ``ready`` being the workers that are ready (not starting).
     Latency is a *second* metric rather than a modifier of the backlog target, so the two
     combine the HPA way and the chart hands both to KEDA or an HPA unchanged.
3. The largest proposal wins.  A metric that cannot be read proposes nothing; when no metric
   can be read nothing changes, and while one is missing the others may scale up but never
   down (``computeReplicasForMetrics``).
4. A fresh autoscaler records the current count as its first recommendation, as the HPA's
   first sync does (``recordInitialRecommendation``): a restart waits out the windows.
5. With ``spec.behavior`` (:class:`Behavior`): stabilization - over the scale-up window the
   *minimum* of the recorded proposals, over the scale-down window the *maximum*, ``current``
   clamped between them - then the rate policies, each bounding the change relative to the
   count at the start of its period (``Pods`` ± value, ``Percent`` x (1 ± value/100), rounded
   up when scaling up and truncated when scaling down, as in Go; ``selectPolicy`` Max, Min or
   Disabled), then min/max.  Per-direction tolerances (``ScalingRules.tolerance``, on by
   default since Kubernetes 1.35) override the cluster-wide one.
6. Without ``spec.behavior`` (``behavior=None``, what KEDA creates unless told otherwise and
   what a plain HPA gets): the largest proposal of the last ``downscale_stabilization_seconds``
   (the controller's ``--horizontal-pod-autoscaler-downscale-stabilization``, 300 s), then the
   older scale-up cap ``max(2 x current, 4)``, then min/max; the cluster-wide tolerance
   applies in both directions.

Deliberate differences from the HPA controller (nothing else differs; the upstream test
tables in ``tests/test_autoscale_hpa_upstream.py`` check it row by row):

* **Zero is KEDA's** (``pkg/scaling/executor/scale_scaledobjects.go``).  At 0 replicas the
  HPA does nothing; here a group at 0 is *activated* when the backlog exceeds
  ``activation_backlog`` (or the oldest message is older than the latency target) and goes to
  ``max(min, 1)``, and goes to ``min`` if that is above 0.  With ``min_replicas == 0`` the HPA
  part keeps at least one worker, and KEDA takes the group to zero once no metric has shown
  activity for more than ``cooldown_seconds`` (or, if none ever did, more than
  ``initial_cooldown_seconds`` after the autoscaler started) - never while a metric is
  missing.

Scope, not a difference: only External metrics exist here, so the Resource/Pods-metric rules
for unready and missing pods never apply; the controller's sync period is the caller's loop
(``ScalingPolicy.sync_period_seconds`` says what it should be).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

#: kube-controller-manager's ``--horizontal-pod-autoscaler-tolerance`` default.
HPA_DEFAULT_TOLERANCE = 0.1
#: kube-controller-manager's ``--horizontal-pod-autoscaler-sync-period`` default.
HPA_SYNC_PERIOD_SECONDS = 15.0
#: kube-controller-manager's ``--horizontal-pod-autoscaler-downscale-stabilization`` default.
HPA_DOWNSCALE_STABILIZATION_SECONDS = 300
#: The scale-up cap of an HPA without ``spec.behavior``: ``max(factor x current, minimum)``.
HPA_SCALE_UP_LIMIT_FACTOR = 2.0
HPA_SCALE_UP_LIMIT_MINIMUM = 4.0
#: KEDA ScaledObject defaults (``pollingInterval``, ``cooldownPeriod``, ``initialCooldownPeriod``).
KEDA_POLLING_INTERVAL_SECONDS = 30.0
KEDA_COOLDOWN_SECONDS = 300.0
KEDA_INITIAL_COOLDOWN_SECONDS = 0.0
#: KEDA's redis scaler ``listLength`` default target.
KEDA_DEFAULT_LIST_LENGTH = 5.0


class PolicyError(ValueError):
    """A scaling policy that Kubernetes would reject (or that makes no sense)."""


class PolicyType(StrEnum):
    PODS = "Pods"
    PERCENT = "Percent"


class SelectPolicy(StrEnum):
    MAX = "Max"
    MIN = "Min"
    DISABLED = "Disabled"


@dataclass(frozen=True)
class Tolerances:
    """How far a metric's ratio may stray from 1 before it proposes a change, per direction."""

    scale_down: float = HPA_DEFAULT_TOLERANCE
    scale_up: float = HPA_DEFAULT_TOLERANCE

    def within(self, ratio: float) -> bool:
        # Two comparisons, as the controller makes them: |1 - ratio| <= tolerance is not the
        # same test in floating point (|1 - 1.1| is 0.10000000000000009).
        return 1.0 - self.scale_down <= ratio <= 1.0 + self.scale_up


@dataclass(frozen=True)
class RatePolicy:
    """One ``HPAScalingPolicy``: at most ``value`` pods (or percent) per ``period_seconds``."""

    type: PolicyType
    value: int
    period_seconds: int

    def validated(self) -> RatePolicy:
        if self.value <= 0:
            raise PolicyError(f"rate policy value must be > 0, got {self.value}")
        if not 0 < self.period_seconds <= 1800:
            raise PolicyError(f"rate policy periodSeconds must be in 1..1800, got {self.period_seconds}")
        return self


@dataclass(frozen=True)
class ScalingRules:
    """One direction of ``spec.behavior`` (``HPAScalingRules``)."""

    stabilization_window_seconds: int
    policies: tuple[RatePolicy, ...]
    select_policy: SelectPolicy = SelectPolicy.MAX
    #: ``HPAScalingRules.tolerance``: this direction's tolerance; None: the cluster-wide one.
    tolerance: float | None = None

    def validated(self) -> ScalingRules:
        if not 0 <= self.stabilization_window_seconds <= 3600:
            raise PolicyError(
                f"stabilizationWindowSeconds must be in 0..3600, got {self.stabilization_window_seconds}"
            )
        if not self.policies and self.select_policy is not SelectPolicy.DISABLED:
            raise PolicyError("at least one rate policy is needed unless selectPolicy is Disabled")
        if self.tolerance is not None and not self.tolerance >= 0:
            raise PolicyError(f"tolerance must be >= 0, got {self.tolerance}")
        for policy in self.policies:
            policy.validated()
        return self

    def as_dict(self) -> dict[str, Any]:
        """In the API's field names (``spec.behavior.scaleUp`` / ``scaleDown``)."""
        out: dict[str, Any] = {
            "stabilizationWindowSeconds": self.stabilization_window_seconds,
            "selectPolicy": str(self.select_policy),
            "policies": [
                {"type": str(p.type), "value": p.value, "periodSeconds": p.period_seconds}
                for p in self.policies
            ],
        }
        if self.tolerance is not None:
            out["tolerance"] = self.tolerance
        return out


def default_scale_up() -> ScalingRules:
    """``spec.behavior.scaleUp`` as the API server fills it in: no stabilization, max(100 %,
    4 pods) per 15 s."""
    return ScalingRules(
        stabilization_window_seconds=0,
        policies=(RatePolicy(PolicyType.PODS, 4, 15), RatePolicy(PolicyType.PERCENT, 100, 15)),
        select_policy=SelectPolicy.MAX,
    )


def default_scale_down() -> ScalingRules:
    """``spec.behavior.scaleDown`` as the API server fills it in: the controller's 300 s
    window, 100 % per 15 s."""
    return ScalingRules(
        stabilization_window_seconds=HPA_DOWNSCALE_STABILIZATION_SECONDS,
        policies=(RatePolicy(PolicyType.PERCENT, 100, 15),),
        select_policy=SelectPolicy.MAX,
    )


@dataclass(frozen=True)
class Behavior:
    """``spec.behavior``; a direction left out gets the API server's defaults."""

    scale_up: ScalingRules = field(default_factory=default_scale_up)
    scale_down: ScalingRules = field(default_factory=default_scale_down)


@dataclass(frozen=True)
class ScalingPolicy:
    """How one worker group scales.  Field names map one to one onto the chart's values."""

    #: Backlog (waiting + held) per worker the fleet aims for: the AverageValue target.
    backlog_per_worker: float = 5.0
    #: Optional queue latency target (oldest waiting message's age, seconds): a Value target.
    oldest_age_target_seconds: float | None = None
    min_replicas: int = 0
    max_replicas: int = 10
    #: The cluster-wide tolerance (both directions unless ``behavior`` overrides one).
    tolerance: float = HPA_DEFAULT_TOLERANCE
    #: ``spec.behavior``; None: none given (the controller's older, fixed rules).
    behavior: Behavior | None = field(default_factory=Behavior)
    #: The controller's scale-down window for an HPA without ``spec.behavior``.
    downscale_stabilization_seconds: int = HPA_DOWNSCALE_STABILIZATION_SECONDS
    #: KEDA ``activationTargetValue``: from zero, scale up only when backlog exceeds this.
    activation_backlog: float = 0.0
    #: KEDA ``cooldownPeriod``: idle this long before going back to zero (min_replicas == 0).
    cooldown_seconds: float = KEDA_COOLDOWN_SECONDS
    #: KEDA ``initialCooldownPeriod``: before any activity, idle this long after the start.
    initial_cooldown_seconds: float = KEDA_INITIAL_COOLDOWN_SECONDS
    #: How often the loop should call :meth:`Autoscaler.decide` (HPA sync / KEDA polling).
    sync_period_seconds: float = HPA_SYNC_PERIOD_SECONDS
    #: Count held (unacked, running) messages in the backlog. KEDA's redis scaler counts the
    #: list only (False): a fleet whose tasks all run then looks idle and shrinks under them.
    count_held: bool = True
    name: str = "celery-fleet"

    def validated(self) -> ScalingPolicy:
        if not self.backlog_per_worker > 0:
            raise PolicyError(f"backlog_per_worker must be > 0, got {self.backlog_per_worker}")
        if self.oldest_age_target_seconds is not None and not self.oldest_age_target_seconds > 0:
            raise PolicyError(f"oldest_age_target_seconds must be > 0, got {self.oldest_age_target_seconds}")
        if self.min_replicas < 0:
            raise PolicyError(f"min_replicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas < max(self.min_replicas, 1):
            raise PolicyError(
                f"max_replicas ({self.max_replicas}) must be >= 1 and >= min_replicas ({self.min_replicas})"
            )
        if not 0 <= self.tolerance < 1:
            raise PolicyError(f"tolerance must be in [0, 1), got {self.tolerance}")
        if not 0 <= self.downscale_stabilization_seconds <= 3600:
            raise PolicyError(
                "downscale_stabilization_seconds must be in 0..3600, "
                f"got {self.downscale_stabilization_seconds}"
            )
        if (
            self.activation_backlog < 0
            or self.cooldown_seconds < 0
            or self.initial_cooldown_seconds < 0
            or not self.sync_period_seconds > 0
        ):
            raise PolicyError("activation_backlog and the cooldowns must be >= 0, sync_period_seconds > 0")
        if self.behavior is not None:
            self.behavior.scale_up.validated()
            self.behavior.scale_down.validated()
        return self

    def tolerances(self) -> Tolerances:
        """The tolerances in force: per direction when ``behavior`` sets one (``tolerancesForHpa``)."""
        up = down = self.tolerance
        if self.behavior is not None:
            if self.behavior.scale_up.tolerance is not None:
                up = self.behavior.scale_up.tolerance
            if self.behavior.scale_down.tolerance is not None:
                down = self.behavior.scale_down.tolerance
        return Tolerances(scale_down=down, scale_up=up)

    def as_dict(self) -> dict[str, Any]:
        behavior = None
        if self.behavior is not None:
            behavior = {
                "scaleUp": self.behavior.scale_up.as_dict(),
                "scaleDown": self.behavior.scale_down.as_dict(),
            }
        return {
            "name": self.name,
            "backlogPerWorker": self.backlog_per_worker,
            "oldestAgeTargetSeconds": self.oldest_age_target_seconds,
            "minReplicas": self.min_replicas,
            "maxReplicas": self.max_replicas,
            "tolerance": self.tolerance,
            "activationBacklog": self.activation_backlog,
            "cooldownSeconds": self.cooldown_seconds,
            "initialCooldownSeconds": self.initial_cooldown_seconds,
            "syncPeriodSeconds": self.sync_period_seconds,
            "countHeld": self.count_held,
            "behavior": behavior,
            "downscaleStabilizationSeconds": self.downscale_stabilization_seconds,
        }


def policy_from_hpa_defaults(
    backlog_per_worker: float = 5.0, *, min_replicas: int = 1, max_replicas: int = 10
) -> ScalingPolicy:
    """A plain HPA on the backlog metric with every default: no ``spec.behavior`` (300 s
    scale-down window, scale-up capped at max(2 x current, 4)), tolerance 0.1, sync 15 s,
    no scale to zero (min >= 1)."""
    return ScalingPolicy(
        backlog_per_worker=backlog_per_worker,
        min_replicas=max(min_replicas, 1),
        max_replicas=max_replicas,
        behavior=None,
        sync_period_seconds=HPA_SYNC_PERIOD_SECONDS,
        name="hpa-defaults",
    ).validated()


def policy_from_keda_defaults(
    list_length: float = KEDA_DEFAULT_LIST_LENGTH, *, min_replicas: int = 0, max_replicas: int = 10
) -> ScalingPolicy:
    """A KEDA ScaledObject with a redis ``listLength`` trigger and every default: queue length
    only (held messages not counted), activation 0, polling 30 s, cooldown 300 s, initial
    cooldown 0, and the HPA it creates without ``spec.behavior`` (KEDA passes
    ``advanced.horizontalPodAutoscalerConfig.behavior`` through, nil unless set)."""
    return ScalingPolicy(
        backlog_per_worker=list_length,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        behavior=None,
        activation_backlog=0.0,
        cooldown_seconds=KEDA_COOLDOWN_SECONDS,
        initial_cooldown_seconds=KEDA_INITIAL_COOLDOWN_SECONDS,
        sync_period_seconds=KEDA_POLLING_INTERVAL_SECONDS,
        count_held=False,
        name="keda-defaults",
    ).validated()


def recommended_policy(
    backlog_per_worker: float = 2.0,
    *,
    oldest_age_target_seconds: float | None = 30.0,
    min_replicas: int = 0,
    max_replicas: int = 10,
) -> ScalingPolicy:
    """celery-fleet's defaults: count held messages, react within seconds, go down gently.

    Decide every 5 s.  Scale-up: no stabilization, up to max(+100 %, +10 pods) per 10 s (the
    backlog is a count of real work, not a noisy utilisation, so it can be trusted at once).
    Scale-down: the largest recommendation of the last 30 s, then the HPA's default rate (100 %
    per 15 s); back to zero after 60 s idle.  Held (running) tasks count, so busy workers are not
    scaled away under their tasks, and workers stop through the graceful drain, idle ones first.
    """
    return ScalingPolicy(
        backlog_per_worker=backlog_per_worker,
        oldest_age_target_seconds=oldest_age_target_seconds,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        behavior=Behavior(
            scale_up=ScalingRules(
                0,
                (RatePolicy(PolicyType.PERCENT, 100, 10), RatePolicy(PolicyType.PODS, 10, 10)),
                SelectPolicy.MAX,
            ),
            scale_down=ScalingRules(30, (RatePolicy(PolicyType.PERCENT, 100, 15),), SelectPolicy.MAX),
        ),
        activation_backlog=0.0,
        cooldown_seconds=60.0,
        sync_period_seconds=5.0,
        count_held=True,
        name="celery-fleet",
    ).validated()


@dataclass(frozen=True)
class QueueMetrics:
    """What the policy reads for one worker group (summed over its queues).

    ``None`` is a value that could not be read (a broker or scrape failure, a waiting message
    without its publish stamp): that metric proposes nothing this time.
    """

    waiting: int | None
    held: int | None = 0
    oldest_age_seconds: float | None = 0.0

    @property
    def backlog(self) -> int | None:
        if self.waiting is None or self.held is None:
            return None
        return self.waiting + self.held


class Cause(StrEnum):
    """Which rule made a decision."""

    #: The metrics' proposal, stabilized and rate-limited (the HPA's normal path).
    METRICS = "metrics"
    #: No metric could be read: nothing changes.
    NO_METRICS = "no-metrics"
    #: A metric could not be read and the others would scale down: nothing changes.
    MISSING_METRIC = "missing-metric"
    ABOVE_MAX = "above-max"
    BELOW_MIN = "below-min"
    #: KEDA: activity on a group at zero.
    ACTIVATED = "activated"
    #: KEDA: idle past the cooldown, back to zero.
    COOLED_DOWN = "cooled-down"
    #: KEDA: at zero and idle.
    IDLE_AT_ZERO = "idle-at-zero"


@dataclass(frozen=True)
class Decision:
    desired: int
    current: int
    cause: Cause
    #: The rule and its numbers, compact (``backlog metric proposes 15; max_replicas -> 4``).
    reason: str
    #: The step and its reason in plain words (``1 → 4 workers (backlog 30, 2 per worker; ...)``).
    summary: str
    inputs: Mapping[str, Any]
    #: The metric whose proposal won (``backlog`` or ``latency``), and that proposal.
    metric: str | None = None
    proposal: int | None = None
    #: What bounded the proposal, in the order applied (``scale-down stabilization``, ...).
    limits: tuple[str, ...] = ()

    @property
    def change(self) -> int:
        return self.desired - self.current

    def log_line(self, group: str) -> str:
        fields = " ".join(f"{k}={_fmt(v)}" for k, v in self.inputs.items())
        head = f"autoscale group={group} current={self.current} desired={self.desired}"
        return f"{head} {fields} cause={self.cause} reason={self.reason!r}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


@dataclass(frozen=True)
class Stamped:
    """A recommendation (replicas) or a scale event (replicas added or removed) at ``at`` s."""

    at: float
    value: int


# -- per metric: the replica calculator ------------------------------------------------------


def _tolerances(tolerance: Tolerances | float) -> Tolerances:
    return tolerance if isinstance(tolerance, Tolerances) else Tolerances(tolerance, tolerance)


def backlog_proposal(backlog: float, target: float, current: int, tolerance: Tolerances | float) -> int:
    """External metric, AverageValue target (``GetExternalPerPodMetricReplicas``)."""
    if current > 0 and _tolerances(tolerance).within(backlog / (target * current)):
        return current
    return math.ceil(backlog / target)


def latency_proposal(
    age: float, target: float, current: int, tolerance: Tolerances | float, *, ready: int | None = None
) -> int:
    """External metric, Value target (``GetExternalMetricReplicas``): the ratio times the ready
    workers (``ready`` defaults to ``current``); at zero workers, ``ceil(ratio)``."""
    ratio = age / target
    if current == 0:
        return math.ceil(ratio)
    if _tolerances(tolerance).within(ratio):
        return current
    return math.ceil(ratio * (current if ready is None else ready))


# -- normalisation: stabilization and rate limits ----------------------------------------------


def stabilize_with_behavior(
    recommendations: Iterable[Stamped],
    now: float,
    current: int,
    proposal: int,
    behavior: Behavior,
) -> int:
    """``stabilizeRecommendationWithBehaviors``: ``current`` clamped between the smallest
    proposal of the scale-up window and the largest of the scale-down window."""
    up_cutoff = now - behavior.scale_up.stabilization_window_seconds
    down_cutoff = now - behavior.scale_down.stabilization_window_seconds
    up_rec = down_rec = proposal
    for rec in recommendations:
        if rec.at > up_cutoff:
            up_rec = min(up_rec, rec.value)
        if rec.at > down_cutoff:
            down_rec = max(down_rec, rec.value)
    return min(max(current, up_rec), down_rec)


def stabilize_without_behavior(
    recommendations: Iterable[Stamped], now: float, proposal: int, window_seconds: float
) -> int:
    """``stabilizeRecommendation``: the largest proposal of the window, this one included.
    (This older rule keeps a recommendation stamped exactly ``window_seconds`` ago.)"""
    cutoff = now - window_seconds
    return max([proposal, *(rec.value for rec in recommendations if rec.at >= cutoff)])


def changed_within(events: Iterable[Stamped], now: float, period_seconds: float) -> int:
    """Replicas added (or removed) by the events of the last ``period_seconds``."""
    cutoff = now - period_seconds
    return sum(e.value for e in events if e.at > cutoff)


def _policy_bounds(
    rules: ScalingRules,
    now: float,
    current: int,
    up_events: Sequence[Stamped],
    down_events: Sequence[Stamped],
    direction: int,
) -> list[int]:
    """Each rate policy's bound (``direction`` +1: the most replicas, -1: the fewest), from the
    count at the start of its period: current - added + removed within it."""
    bounds = []
    for policy in rules.policies:
        start = (
            current
            - changed_within(up_events, now, policy.period_seconds)
            + changed_within(down_events, now, policy.period_seconds)
        )
        if policy.type is PolicyType.PODS:
            bounds.append(start + direction * policy.value)
        elif direction > 0:
            bounds.append(math.ceil(start * (1 + policy.value / 100)))  # rounded up, as in Go
        else:
            bounds.append(int(start * (1 - policy.value / 100)))  # truncated, as in Go
    return bounds


def scale_up_limit(
    rules: ScalingRules,
    now: float,
    current: int,
    up_events: Sequence[Stamped],
    down_events: Sequence[Stamped],
) -> int:
    """``calculateScaleUpLimitWithScalingRules``: the most replicas the policies allow now."""
    if rules.select_policy is SelectPolicy.DISABLED:
        return current
    bounds = _policy_bounds(rules, now, current, up_events, down_events, +1)
    return max(bounds) if rules.select_policy is SelectPolicy.MAX else min(bounds)


def scale_down_limit(
    rules: ScalingRules,
    now: float,
    current: int,
    up_events: Sequence[Stamped],
    down_events: Sequence[Stamped],
) -> int:
    """``calculateScaleDownLimitWithBehaviors``: the fewest replicas the policies allow now."""
    if rules.select_policy is SelectPolicy.DISABLED:
        return current
    bounds = _policy_bounds(rules, now, current, up_events, down_events, -1)
    return min(bounds) if rules.select_policy is SelectPolicy.MAX else max(bounds)


#: Names of the limits a decision reports in ``Decision.limits``.
SCALE_UP_STABILIZATION = "scale-up stabilization"
SCALE_DOWN_STABILIZATION = "scale-down stabilization"
SCALE_UP_RATE = "scale-up rate limit"
SCALE_DOWN_RATE = "scale-down rate limit"
MAX_REPLICAS = "max_replicas"
MIN_REPLICAS = "min_replicas"


def limit_with_behavior(
    behavior: Behavior,
    now: float,
    current: int,
    desired: int,
    minimum: int,
    maximum: int,
    up_events: Sequence[Stamped],
    down_events: Sequence[Stamped],
) -> tuple[int, str | None]:
    """``convertDesiredReplicasWithBehaviorRate``: the rate policies, then min/max."""
    if desired > current:
        limit = max(scale_up_limit(behavior.scale_up, now, current, up_events, down_events), current)
        allowed, why = (limit, SCALE_UP_RATE) if maximum > limit else (maximum, MAX_REPLICAS)
        return (allowed, why) if desired > allowed else (desired, None)
    if desired < current:
        limit = min(scale_down_limit(behavior.scale_down, now, current, up_events, down_events), current)
        allowed, why = (limit, SCALE_DOWN_RATE) if minimum < limit else (minimum, MIN_REPLICAS)
        return (allowed, why) if desired < allowed else (desired, None)
    return desired, None


def limit_without_behavior(current: int, desired: int, minimum: int, maximum: int) -> tuple[int, str | None]:
    """``convertDesiredReplicasWithRules``: min, then the cap ``max(2 x current, 4)`` or max."""
    cap = int(max(HPA_SCALE_UP_LIMIT_FACTOR * current, HPA_SCALE_UP_LIMIT_MINIMUM))
    allowed, why = (cap, SCALE_UP_RATE) if maximum > cap else (maximum, MAX_REPLICAS)
    if desired < minimum:
        return minimum, MIN_REPLICAS
    if desired > allowed:
        return allowed, why
    return desired, None


# -- the reconcile loop ----------------------------------------------------------------------


class Autoscaler:
    """The HPA controller's per-target state and reconcile step, for one worker group, with
    KEDA's handling of zero in front of it.

    ``recommendations`` (and the scale events) are the history to start from, as the
    controller's tests seed it; None: a fresh autoscaler, which records the current count as
    its first recommendation on its first decision.
    """

    def __init__(
        self,
        policy: ScalingPolicy,
        *,
        recommendations: Sequence[Stamped] | None = None,
        scale_up_events: Sequence[Stamped] = (),
        scale_down_events: Sequence[Stamped] = (),
    ) -> None:
        self.policy = policy.validated()
        self._fresh = recommendations is None
        self._recommendations: list[Stamped] = list(recommendations or ())
        self._up_events: list[Stamped] = list(scale_up_events)
        self._down_events: list[Stamped] = list(scale_down_events)
        self._started: float | None = None
        self._last_active: float | None = None

    @property
    def recommendations(self) -> tuple[Stamped, ...]:
        return tuple(self._recommendations)

    # -- KEDA's part, then the metrics ------------------------------------------------------
    def decide(
        self, now: float, current: int, metrics: QueueMetrics, *, ready: int | None = None
    ) -> Decision:
        """One poll: KEDA's activation and cooldown, else the HPA's reconcile on the metrics.
        ``ready``: workers past their start (default ``current``), for the latency metric."""
        p = self.policy
        backlog = metrics.backlog if p.count_held else metrics.waiting
        age = metrics.oldest_age_seconds
        inputs: dict[str, Any] = {
            "backlog": backlog,
            "waiting": metrics.waiting,
            "held": metrics.held,
            "oldest_age": age,
        }
        if ready is not None:
            inputs["ready"] = ready
        missing = [name for name, value in (("backlog", backlog), ("oldest_age", age)) if value is None]
        if p.oldest_age_target_seconds is None and "oldest_age" in missing:
            missing.remove("oldest_age")  # not a metric of this policy
        latency_over = (
            p.oldest_age_target_seconds is not None and age is not None and age > p.oldest_age_target_seconds
        )
        active = (backlog is not None and backlog > p.activation_backlog) or latency_over
        if self._started is None:
            self._started = now
        if active:
            self._last_active = now
        if self._fresh:
            # recordInitialRecommendation: a new HPA's first sync records the current count.
            self._recommendations.append(Stamped(now, current))
            self._fresh = False

        if current == 0:
            if active:
                desired = max(p.min_replicas, 1)
                return self._keda(
                    current, desired, Cause.ACTIVATED, "activated: backlog on a queue with no workers", inputs
                )
            if p.min_replicas > 0:
                return self._keda(
                    current, p.min_replicas, Cause.BELOW_MIN, "current below min_replicas", inputs
                )
            return self._keda(current, 0, Cause.IDLE_AT_ZERO, "idle at zero", inputs)
        if p.min_replicas == 0 and not active and not missing:
            since, allowed = (
                (self._started, p.initial_cooldown_seconds)
                if self._last_active is None
                else (self._last_active, p.cooldown_seconds)
            )
            idle_for = now - since
            inputs["idle_for"] = idle_for
            if idle_for > allowed:
                inputs["cooldown"] = allowed
                return self._keda(
                    current,
                    0,
                    Cause.COOLED_DOWN,
                    f"idle for {idle_for:.0f}s > cooldown {allowed:g}s: scale to zero",
                    inputs,
                )

        proposals: dict[str, int | None] = {
            "backlog": None
            if backlog is None
            else backlog_proposal(backlog, p.backlog_per_worker, current, p.tolerances())
        }
        if p.oldest_age_target_seconds is not None:
            proposals["latency"] = (
                None
                if age is None
                else latency_proposal(age, p.oldest_age_target_seconds, current, p.tolerances(), ready=ready)
            )
        return self.reconcile(now, current, proposals, inputs=inputs)

    # -- the HPA's reconcile ----------------------------------------------------------------
    def reconcile(
        self,
        now: float,
        current: int,
        proposals: Mapping[str, int | None],
        *,
        inputs: Mapping[str, Any] | None = None,
    ) -> Decision:
        """``reconcileAutoscaler`` given each metric's proposal (None: could not be read), for a
        target at ``current`` > 0 replicas."""
        p = self.policy
        facts: dict[str, Any] = dict(inputs or {})
        facts["proposals"] = dict(proposals)
        hpa_min = max(p.min_replicas, 1)
        if self._fresh:
            self._recommendations.append(Stamped(now, current))
            self._fresh = False
        if current > p.max_replicas:
            return self._hpa(
                now, current, p.max_replicas, Cause.ABOVE_MAX, "current above max_replicas", facts
            )
        if current < hpa_min:
            return self._hpa(now, current, hpa_min, Cause.BELOW_MIN, "current below min_replicas", facts)

        readable = {name: value for name, value in proposals.items() if value is not None}
        unreadable = [name for name, value in proposals.items() if value is None]
        if not readable:
            return self._hpa(now, current, current, Cause.NO_METRICS, "no metric could be read", facts)
        metric, proposed = max(readable.items(), key=lambda kv: kv[1])
        if unreadable and proposed < current:
            return self._hpa(
                now,
                current,
                current,
                Cause.MISSING_METRIC,
                f"{', '.join(unreadable)} unreadable: no scale-down while a metric is missing",
                facts,
            )

        limits: list[str] = []
        if p.behavior is None:
            stabilized = stabilize_without_behavior(
                self._recommendations, now, proposed, p.downscale_stabilization_seconds
            )
            self._recommendations.append(Stamped(now, proposed))
            desired, limit = limit_without_behavior(current, stabilized, hpa_min, p.max_replicas)
        else:
            stabilized = stabilize_with_behavior(self._recommendations, now, current, proposed, p.behavior)
            self._recommendations.append(Stamped(now, proposed))
            desired, limit = limit_with_behavior(
                p.behavior,
                now,
                current,
                stabilized,
                hpa_min,
                p.max_replicas,
                self._up_events,
                self._down_events,
            )
        if stabilized != proposed:
            limits.append(SCALE_UP_STABILIZATION if stabilized < proposed else SCALE_DOWN_STABILIZATION)
        if limit:
            limits.append(limit)
        reason = f"{metric} metric proposes {proposed}"
        if limits and stabilized != proposed:
            reason += f"; {limits[0]} -> {stabilized}"
        if limit:
            reason += f"; {limit} -> {desired}"
        if desired == current and proposed == current:
            reason = f"{metric} metric within tolerance or on target"
        return self._hpa(now, current, desired, Cause.METRICS, reason, facts, metric, proposed, tuple(limits))

    # -- bookkeeping ------------------------------------------------------------------------
    def _keda(
        self, current: int, desired: int, cause: Cause, reason: str, inputs: dict[str, Any]
    ) -> Decision:
        # KEDA's own changes are not the HPA's scale events (storeScaleEvent never sees them).
        return self._decision(current, desired, cause, reason, inputs)

    def _hpa(
        self,
        now: float,
        current: int,
        desired: int,
        cause: Cause,
        reason: str,
        inputs: dict[str, Any],
        metric: str | None = None,
        proposal: int | None = None,
        limits: tuple[str, ...] = (),
    ) -> Decision:
        # storeScaleEvent: only with spec.behavior, whose rate policies read them.
        if self.policy.behavior is not None and desired > current:
            self._up_events.append(Stamped(now, desired - current))
        elif self.policy.behavior is not None and desired < current:
            self._down_events.append(Stamped(now, current - desired))
        self._forget(now)
        return self._decision(current, desired, cause, reason, inputs, metric, proposal, limits)

    def _decision(
        self,
        current: int,
        desired: int,
        cause: Cause,
        reason: str,
        inputs: dict[str, Any],
        metric: str | None = None,
        proposal: int | None = None,
        limits: tuple[str, ...] = (),
    ) -> Decision:
        return Decision(
            desired=desired,
            current=current,
            cause=cause,
            reason=reason,
            summary=summarize(self.policy, current, desired, cause, inputs, metric, proposal, limits),
            inputs=inputs,
            metric=metric,
            proposal=proposal,
            limits=limits,
        )

    def _forget(self, now: float) -> None:
        p = self.policy
        spans: list[float] = [p.downscale_stabilization_seconds]
        if p.behavior is not None:
            b = p.behavior
            spans += [b.scale_up.stabilization_window_seconds, b.scale_down.stabilization_window_seconds]
            spans += [r.period_seconds for r in (*b.scale_up.policies, *b.scale_down.policies)]
        cutoff = now - max(spans) - 1
        self._recommendations = [r for r in self._recommendations if r.at > cutoff]
        self._up_events = [e for e in self._up_events if e.at > cutoff]
        self._down_events = [e for e in self._down_events if e.at > cutoff]


# -- plain words ---------------------------------------------------------------------------


def _workers(n: int) -> str:
    return f"{n} worker" if n == 1 else f"{n} workers"


def _limit_words(policy: ScalingPolicy, limit: str, desired: int) -> str:
    b = policy.behavior
    if limit == SCALE_DOWN_STABILIZATION:
        window = (
            policy.downscale_stabilization_seconds if b is None else b.scale_down.stabilization_window_seconds
        )
        return f"waiting out the {window} s scale-down window"
    if limit == SCALE_UP_STABILIZATION and b is not None:
        return f"waiting out the {b.scale_up.stabilization_window_seconds} s scale-up window"
    if limit == SCALE_UP_RATE:
        return f"scale-up rate limit {desired}"
    if limit == SCALE_DOWN_RATE:
        return f"scale-down rate limit {desired}"
    if limit == MAX_REPLICAS:
        return f"capped at the maximum {policy.max_replicas}"
    if limit == MIN_REPLICAS:
        return f"kept at the minimum {max(policy.min_replicas, 1)}"
    return limit


def summarize(
    policy: ScalingPolicy,
    current: int,
    desired: int,
    cause: Cause,
    inputs: Mapping[str, Any],
    metric: str | None = None,
    proposal: int | None = None,
    limits: Sequence[str] = (),
) -> str:
    """``1 → 4 workers (backlog 30, 2 per worker; capped at the maximum 4)``."""
    head = f"{current} → {_workers(desired)}" if desired != current else f"stays at {_workers(current)}"
    backlog, age = inputs.get("backlog"), inputs.get("oldest_age")
    if cause is Cause.METRICS:
        if metric == "latency" and age is not None and policy.oldest_age_target_seconds is not None:
            why = f"oldest message {age:.0f} s, target {policy.oldest_age_target_seconds:g} s"
        elif metric == "backlog" and backlog is not None:
            why = f"backlog {backlog:g}, {policy.backlog_per_worker:g} per worker"
        else:
            why = f"{metric} metric"
        if proposal == current and desired == current:
            why += ": on target"
        elif proposal is not None and proposal != desired:
            why += f" asks for {proposal}"
        words = [_limit_words(policy, limit, desired) for limit in limits]
        return f"{head} ({'; '.join([why, *words])})"
    reasons = {
        Cause.NO_METRICS: "no metric could be read",
        Cause.MISSING_METRIC: "a metric is unreadable: no scale-down until it is back",
        Cause.ABOVE_MAX: f"above the maximum {policy.max_replicas}",
        Cause.BELOW_MIN: f"below the minimum {max(policy.min_replicas, 1) if current else desired}",
        Cause.ACTIVATED: f"activated: backlog {backlog} on a group with no workers"
        if backlog
        else "activated: the oldest message is over its target",
        Cause.COOLED_DOWN: (
            f"idle for {inputs.get('idle_for', 0.0):.0f} s, cooldown {inputs.get('cooldown', 0.0):g} s"
        ),
        Cause.IDLE_AT_ZERO: "idle",
    }
    return f"{head} ({reasons[cause]})"


def desired_replicas(
    policy: ScalingPolicy, current: int, metrics: QueueMetrics, *, now: float = 0.0, ready: int | None = None
) -> Decision:
    """One decision of a fresh autoscaler (its history: the current count, just recorded)."""
    return Autoscaler(policy).decide(now, current, metrics, ready=ready)
