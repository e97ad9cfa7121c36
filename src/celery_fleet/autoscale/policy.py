"""The scaling policy: desired workers per queue, with the Kubernetes HPA v2 algorithm.

Pure and stateful only through :class:`Autoscaler` (the recommendation and scale-event
history the HPA controller keeps per target).  What it reproduces, step by step, from the
HPA controller (``pkg/controller/podautoscaler``: ``horizontal.go``, ``replica_calculator.go``):

1. Per metric, a proposal.

   * **Backlog** (``celery_fleet_queue_backlog`` = waiting + held messages) is an *External
     metric with an AverageValue target*: the HPA computes
     ``usageRatio = backlog / (target * current)`` and, if ``|1 - usageRatio| > tolerance``,
     proposes ``ceil(backlog / target)``; otherwise it keeps ``current``.  This is exactly what
     a KEDA ScaledObject trigger asks of the HPA.
   * **Latency** (``celery_fleet_queue_oldest_age_seconds``), optional, is an *External metric
     with a Value target*: ``usageRatio = age / target`` and, outside the tolerance, the HPA
     proposes ``ceil(current * usageRatio)``.  Choice made here: latency is a *second* metric
     rather than a modifier of the backlog target, so the two combine the HPA way (max of the
     proposals) and the chart can hand both to KEDA/HPA unchanged.  The ratio rule multiplies
     the *current* fleet; from zero workers it cannot grow anything, so when ``current == 0``
     and the age is over its target the proposal is 1 (KEDA's activation does the same job).
2. The largest proposal wins (several metrics).
3. Stabilization (``stabilizeRecommendationWithBehaviors``): over the scale-up window take the
   *minimum* of the recorded proposals, over the scale-down window the *maximum*; the result
   is ``current`` clamped into ``[up_min, down_max]``.  The raw proposal is then recorded.
4. Rate policies (``convertDesiredReplicasWithBehaviorRate``): each policy bounds the change
   relative to the replica count at the start of its period (current minus what was added
   plus what was removed within ``period_seconds``); ``Pods`` adds/removes ``value``,
   ``Percent`` multiplies by ``1 ± value/100`` (rounded up for scale-up, truncated for
   scale-down, as in Go); ``selectPolicy`` Max picks the biggest change, Min the smallest,
   Disabled none.  Then ``min_replicas``/``max_replicas`` clamp.
5. Out-of-range current counts are corrected first, as in the HPA (``current > max`` → max,
   ``current < min`` → min).

Scale to and from zero is KEDA's, not the HPA's (the HPA does not act at 0 replicas): with
``current == 0`` the target is *activated* when the backlog exceeds ``activation_backlog``
(or the oldest message is older than the latency target) and goes to ``max(min, 1)``; the
HPA rules then take over.  With ``min_replicas == 0``, the HPA part keeps at least one worker
and the fleet goes back to zero only after the queue has been idle (backlog <= activation)
for ``cooldown_seconds`` (KEDA's ``cooldownPeriod``).

Not modelled: the HPA's handling of unready/missing pods for Resource metrics (not used:
both metrics here are External), and the controller's own sync period, which is the
caller's loop (``ScalingPolicy.sync_period_seconds`` says what it should be).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

#: kube-controller-manager's ``--horizontal-pod-autoscaler-tolerance`` default.
HPA_DEFAULT_TOLERANCE = 0.1
#: kube-controller-manager's ``--horizontal-pod-autoscaler-sync-period`` default.
HPA_SYNC_PERIOD_SECONDS = 15.0
#: KEDA ScaledObject defaults.
KEDA_POLLING_INTERVAL_SECONDS = 30.0
KEDA_COOLDOWN_SECONDS = 300.0
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

    def validated(self) -> ScalingRules:
        if not 0 <= self.stabilization_window_seconds <= 3600:
            raise PolicyError(
                f"stabilizationWindowSeconds must be in 0..3600, got {self.stabilization_window_seconds}"
            )
        if not self.policies and self.select_policy is not SelectPolicy.DISABLED:
            raise PolicyError("at least one rate policy is needed unless selectPolicy is Disabled")
        for policy in self.policies:
            policy.validated()
        return self


def default_scale_up() -> ScalingRules:
    """The HPA's default scale-up: no stabilization, max(100 %, 4 pods) per 15 s."""
    return ScalingRules(
        stabilization_window_seconds=0,
        policies=(RatePolicy(PolicyType.PERCENT, 100, 15), RatePolicy(PolicyType.PODS, 4, 15)),
        select_policy=SelectPolicy.MAX,
    )


def default_scale_down() -> ScalingRules:
    """The HPA's default scale-down: 300 s stabilization, 100 % per 15 s."""
    return ScalingRules(
        stabilization_window_seconds=300,
        policies=(RatePolicy(PolicyType.PERCENT, 100, 15),),
        select_policy=SelectPolicy.MAX,
    )


@dataclass(frozen=True)
class Behavior:
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
    tolerance: float = HPA_DEFAULT_TOLERANCE
    behavior: Behavior = field(default_factory=Behavior)
    #: KEDA ``activationTargetValue``: from zero, scale up only when backlog exceeds this.
    activation_backlog: float = 0.0
    #: KEDA ``cooldownPeriod``: idle this long before going back to zero (min_replicas == 0).
    cooldown_seconds: float = KEDA_COOLDOWN_SECONDS
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
        if self.activation_backlog < 0 or self.cooldown_seconds < 0 or not self.sync_period_seconds > 0:
            raise PolicyError("activation_backlog and cooldown_seconds must be >= 0, sync_period_seconds > 0")
        self.behavior.scale_up.validated()
        self.behavior.scale_down.validated()
        return self

    def as_dict(self) -> dict[str, Any]:
        def rules(r: ScalingRules) -> dict[str, Any]:
            return {
                "stabilizationWindowSeconds": r.stabilization_window_seconds,
                "selectPolicy": str(r.select_policy),
                "policies": [
                    {"type": str(p.type), "value": p.value, "periodSeconds": p.period_seconds}
                    for p in r.policies
                ],
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
            "syncPeriodSeconds": self.sync_period_seconds,
            "countHeld": self.count_held,
            "behavior": {
                "scaleUp": rules(self.behavior.scale_up),
                "scaleDown": rules(self.behavior.scale_down),
            },
        }


def policy_from_hpa_defaults(
    backlog_per_worker: float = 5.0, *, min_replicas: int = 1, max_replicas: int = 10
) -> ScalingPolicy:
    """A plain HPA on the backlog metric with every default (no scale to zero: min >= 1)."""
    return ScalingPolicy(
        backlog_per_worker=backlog_per_worker,
        min_replicas=max(min_replicas, 1),
        max_replicas=max_replicas,
        behavior=Behavior(),
        sync_period_seconds=HPA_SYNC_PERIOD_SECONDS,
        name="hpa-defaults",
    ).validated()


def policy_from_keda_defaults(
    list_length: float = KEDA_DEFAULT_LIST_LENGTH, *, min_replicas: int = 0, max_replicas: int = 10
) -> ScalingPolicy:
    """A KEDA ScaledObject with a redis ``listLength`` trigger and every default: queue length
    only (held messages not counted), activation 0, polling 30 s, cooldown 300 s, HPA defaults."""
    return ScalingPolicy(
        backlog_per_worker=list_length,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        behavior=Behavior(),
        activation_backlog=0.0,
        cooldown_seconds=KEDA_COOLDOWN_SECONDS,
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
    per 15 s); back to zero after 60 s idle.  Held (running) tasks count, so busy workers are not scaled away
    under their tasks, and workers stop through the graceful drain, idle ones first.
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
    """What the policy reads for one worker group (summed over its queues)."""

    waiting: int
    held: int = 0
    oldest_age_seconds: float = 0.0

    @property
    def backlog(self) -> int:
        return self.waiting + self.held


@dataclass(frozen=True)
class Decision:
    desired: int
    current: int
    reason: str
    inputs: Mapping[str, Any]

    @property
    def change(self) -> int:
        return self.desired - self.current

    def log_line(self, group: str) -> str:
        fields = " ".join(f"{k}={_fmt(v)}" for k, v in self.inputs.items())
        head = f"autoscale group={group} current={self.current} desired={self.desired}"
        return f"{head} {fields} reason={self.reason!r}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


@dataclass(frozen=True)
class _Stamped:
    at: float
    value: int


def backlog_proposal(backlog: float, target: float, current: int, tolerance: float) -> int:
    """External metric, AverageValue target (``GetExternalPerPodMetricReplicas``)."""
    if current > 0:
        ratio = backlog / (target * current)
        if abs(1.0 - ratio) <= tolerance:
            return current
    return math.ceil(backlog / target)


def latency_proposal(age: float, target: float, current: int, tolerance: float) -> int:
    """External metric, Value target (``GetExternalMetricReplicas``); from zero: 1 if over target."""
    ratio = age / target
    if current == 0:
        return 1 if ratio > 1.0 else 0
    if abs(1.0 - ratio) <= tolerance:
        return current
    return math.ceil(ratio * current)


class Autoscaler:
    """The HPA controller's per-target state and reconcile step, for one worker group."""

    def __init__(self, policy: ScalingPolicy) -> None:
        self.policy = policy.validated()
        self._recommendations: list[_Stamped] = []
        self._up_events: list[_Stamped] = []
        self._down_events: list[_Stamped] = []
        self._last_active: float | None = None

    # -- the reconcile step -------------------------------------------------------------
    def decide(self, now: float, current: int, metrics: QueueMetrics) -> Decision:
        p = self.policy
        backlog = metrics.backlog if p.count_held else metrics.waiting
        inputs: dict[str, Any] = {
            "backlog": backlog,
            "waiting": metrics.waiting,
            "held": metrics.held,
            "oldest_age": metrics.oldest_age_seconds,
        }
        latency_over = p.oldest_age_target_seconds is not None and metrics.oldest_age_seconds > (
            p.oldest_age_target_seconds
        )
        active = backlog > p.activation_backlog or latency_over
        if active or self._last_active is None:
            self._last_active = now
        hpa_min = max(p.min_replicas, 1)

        # KEDA's part: activation from zero and the cooldown back to zero (not HPA events).
        if current == 0:
            if active:
                desired = max(p.min_replicas, 1)
                return self._done(
                    now, current, desired, "activated: backlog on a queue with no workers", inputs
                )
            if p.min_replicas > 0:
                return self._done(now, current, p.min_replicas, "current below min_replicas", inputs)
            return self._done(now, current, 0, "idle at zero", inputs)
        idle_for = now - self._last_active
        inputs["idle_for"] = idle_for
        if p.min_replicas == 0 and not active and idle_for >= p.cooldown_seconds:
            self._recommendations.clear()
            return self._done(now, current, 0, f"idle for {idle_for:.0f}s >= cooldown: scale to zero", inputs)

        # The HPA's part.
        if current > p.max_replicas:
            return self._done(now, current, p.max_replicas, "current above max_replicas", inputs, hpa=True)
        if current < hpa_min:
            return self._done(now, current, hpa_min, "current below min_replicas", inputs, hpa=True)

        proposals = {"backlog": backlog_proposal(backlog, p.backlog_per_worker, current, p.tolerance)}
        if p.oldest_age_target_seconds is not None:
            proposals["latency"] = latency_proposal(
                metrics.oldest_age_seconds, p.oldest_age_target_seconds, current, p.tolerance
            )
        metric, proposed = max(proposals.items(), key=lambda kv: kv[1])
        inputs["proposals"] = dict(proposals)
        reason = f"{metric} metric proposes {proposed}"

        stabilized, why = self._stabilize(now, current, proposed)
        desired, limit = self._rate_limit(now, current, stabilized, hpa_min, p.max_replicas)
        if why:
            reason += f"; {why} -> {stabilized}"
        if limit:
            reason += f"; {limit} -> {desired}"
        if desired == current and proposed == current:
            reason = f"{metric} metric within tolerance or on target"
        return self._done(now, current, desired, reason, inputs, hpa=True)

    def _done(
        self,
        now: float,
        current: int,
        desired: int,
        reason: str,
        inputs: dict[str, Any],
        *,
        hpa: bool = False,
    ) -> Decision:
        # Only the HPA's own changes count against its rate policies (storeScaleEvent).
        if hpa and desired > current:
            self._up_events.append(_Stamped(now, desired - current))
        elif hpa and desired < current:
            self._down_events.append(_Stamped(now, current - desired))
        self._forget(now)
        return Decision(desired=desired, current=current, reason=reason, inputs=inputs)

    # -- stabilization ------------------------------------------------------------------
    def _stabilize(self, now: float, current: int, proposed: int) -> tuple[int, str]:
        b = self.policy.behavior
        up_cutoff = now - b.scale_up.stabilization_window_seconds
        down_cutoff = now - b.scale_down.stabilization_window_seconds
        up_rec = down_rec = proposed
        for rec in self._recommendations:
            if rec.at > up_cutoff:
                up_rec = min(up_rec, rec.value)
            if rec.at > down_cutoff:
                down_rec = max(down_rec, rec.value)
        recommendation = min(max(current, up_rec), down_rec)
        self._recommendations.append(_Stamped(now, proposed))
        why = ""
        if recommendation != proposed:
            why = "scale-up stabilization" if recommendation < proposed else "scale-down stabilization"
        return recommendation, why

    # -- rate policies --------------------------------------------------------------------
    def _changed_within(self, events: list[_Stamped], now: float, period: int) -> int:
        cutoff = now - period
        return sum(e.value for e in events if e.at > cutoff)

    def _period_start(self, now: float, current: int, period: int) -> int:
        added = self._changed_within(self._up_events, now, period)
        removed = self._changed_within(self._down_events, now, period)
        return current - added + removed

    def scale_up_limit(self, now: float, current: int) -> int:
        rules = self.policy.behavior.scale_up
        if rules.select_policy is SelectPolicy.DISABLED:
            return current
        proposals = []
        for policy in rules.policies:
            start = self._period_start(now, current, policy.period_seconds)
            if policy.type is PolicyType.PODS:
                proposals.append(start + policy.value)
            else:
                proposals.append(math.ceil(start * (1 + policy.value / 100)))
        return max(proposals) if rules.select_policy is SelectPolicy.MAX else min(proposals)

    def scale_down_limit(self, now: float, current: int) -> int:
        rules = self.policy.behavior.scale_down
        if rules.select_policy is SelectPolicy.DISABLED:
            return current
        proposals = []
        for policy in rules.policies:
            start = self._period_start(now, current, policy.period_seconds)
            if policy.type is PolicyType.PODS:
                proposals.append(start - policy.value)
            else:
                proposals.append(int(start * (1 - policy.value / 100)))
        return min(proposals) if rules.select_policy is SelectPolicy.MAX else max(proposals)

    def _rate_limit(
        self, now: float, current: int, desired: int, minimum: int, maximum: int
    ) -> tuple[int, str]:
        if desired > current:
            limit = max(self.scale_up_limit(now, current), current)
            allowed, why = (limit, "scale-up rate limit") if maximum > limit else (maximum, "max_replicas")
            return (allowed, why) if desired > allowed else (desired, "")
        if desired < current:
            limit = min(self.scale_down_limit(now, current), current)
            allowed, why = (limit, "scale-down rate limit") if minimum < limit else (minimum, "min_replicas")
            return (allowed, why) if desired < allowed else (desired, "")
        return desired, ""

    def _forget(self, now: float) -> None:
        b = self.policy.behavior
        keep = max(
            [b.scale_up.stabilization_window_seconds, b.scale_down.stabilization_window_seconds]
            + [p.period_seconds for p in (*b.scale_up.policies, *b.scale_down.policies)]
        )
        cutoff = now - keep - 1
        self._recommendations = [r for r in self._recommendations if r.at > cutoff]
        self._up_events = [e for e in self._up_events if e.at > cutoff]
        self._down_events = [e for e in self._down_events if e.at > cutoff]


def desired_replicas(
    policy: ScalingPolicy, current: int, metrics: QueueMetrics, *, now: float = 0.0
) -> Decision:
    """One decision with no history (a fresh HPA): handy for tables and dry runs."""
    return Autoscaler(policy).decide(now, current, metrics)
