"""One source of truth for the timings that decide whether a task is lost.

A task can be interrupted in three ways: its own time limit, a graceful stop
(SIGTERM: the drain window, then requeue) and a hard kill (SIGKILL: the
message comes back after the broker's visibility timeout).  These numbers only
work together, so they are derived here from a few inputs and checked as a
whole; the Helm chart's ``validateValues`` applies the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass


class TimingsError(ValueError):
    """The timings contradict each other; the message says which and how to fix it."""


#: Seconds between the end of the drain window and the end of the grace period: time
#: for the cold shutdown to cancel the pool, requeue unacked messages and exit.
REQUEUE_MARGIN_SECONDS = 10
#: Seconds the visibility timeout exceeds the hard time limit, so a long but healthy
#: task is never redelivered while it is still running.
VISIBILITY_MARGIN_SECONDS = 30
#: Seconds between the broker sweeps that put abandoned (unacked, past visibility) messages back.
RESTORE_SWEEP_SECONDS = 5


@dataclass(frozen=True)
class Timings:
    """The timing contract of one worker group.

    ``soft_time_limit`` < ``time_limit`` (the task gets a chance to clean up);
    ``drain_window`` + margin <= ``grace_period`` (the worker requeues and exits
    before Kubernetes kills it); ``visibility_timeout`` > ``time_limit`` + margin
    (no redelivery of a running task), and it is also the redelivery delay after
    SIGKILL, so it should stay short.
    """

    soft_time_limit: int = 240
    time_limit: int = 300
    drain_window: int = 30
    grace_period: int | None = None
    visibility_timeout: int | None = None

    @property
    def effective_grace_period(self) -> int:
        if self.grace_period is not None:
            return self.grace_period
        return self.drain_window + REQUEUE_MARGIN_SECONDS

    @property
    def effective_visibility_timeout(self) -> int:
        if self.visibility_timeout is not None:
            return self.visibility_timeout
        return self.time_limit + VISIBILITY_MARGIN_SECONDS

    @property
    def redelivery_delay(self) -> int:
        """Worst-case seconds before a task held by a SIGKILLed worker is queued again."""
        return self.effective_visibility_timeout + RESTORE_SWEEP_SECONDS

    def check(self) -> list[str]:
        """Every inconsistency, as a sentence a person can act on."""
        errors: list[str] = []
        if self.time_limit <= 0:
            errors.append(f"time_limit ({self.time_limit}s) must be positive")
        if self.soft_time_limit <= 0:
            errors.append(f"soft_time_limit ({self.soft_time_limit}s) must be positive")
        if self.soft_time_limit >= self.time_limit:
            errors.append(
                f"soft_time_limit ({self.soft_time_limit}s) must be below time_limit ({self.time_limit}s) "
                "so the task gets SoftTimeLimitExceeded before it is killed"
            )
        if self.drain_window < 0:
            errors.append(f"drain_window ({self.drain_window}s) must not be negative")
        grace = self.effective_grace_period
        if grace < self.drain_window + REQUEUE_MARGIN_SECONDS:
            errors.append(
                f"grace_period ({grace}s) must be at least drain_window ({self.drain_window}s) + "
                f"{REQUEUE_MARGIN_SECONDS}s, or the worker is SIGKILLed before it can requeue its tasks"
            )
        visibility = self.effective_visibility_timeout
        if visibility < self.time_limit + VISIBILITY_MARGIN_SECONDS:
            errors.append(
                f"visibility_timeout ({visibility}s) must be at least time_limit ({self.time_limit}s) + "
                f"{VISIBILITY_MARGIN_SECONDS}s, or Redis redelivers tasks that are still running"
            )
        return errors

    def validated(self) -> Timings:
        errors = self.check()
        if errors:
            raise TimingsError("inconsistent worker timings: " + "; ".join(errors))
        return self

    def as_dict(self) -> dict[str, int]:
        return {
            "soft_time_limit": self.soft_time_limit,
            "time_limit": self.time_limit,
            "drain_window": self.drain_window,
            "grace_period": self.effective_grace_period,
            "visibility_timeout": self.effective_visibility_timeout,
            "redelivery_delay": self.redelivery_delay,
        }
