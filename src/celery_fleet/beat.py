"""Celery beat that sends each scheduled run once, however many beats are running.

Two beats double every periodic task; none stops them silently.  Both schedulers here
take one Redis lock (``SET NX PX``) before they send anything, refresh it on every tick
and give it up on a clean stop, so any number of beats may run: one sends, the others
stand by and take over once the lock is free (released, or expired after
``lock_timeout`` seconds of silence from a beat that died).

* :class:`LockedRedBeatScheduler` -- the default: celery-redbeat (schedule and
  ``last_run_at`` in Redis, entries from ``CELERY_BEAT_SCHEDULE`` synced at start).
  Plain ``redbeat.RedBeatScheduler`` has the same lock but (a) sleeps up to
  ``beat_max_loop_interval`` (300 s) between ticks while its lock expires after
  ``redbeat_lock_timeout``, so a timeout below 300 s makes the beat die with
  ``LockNotOwnedError`` at its first long sleep, and (b) a second beat blocks silently
  inside ``beat_init``.  Here the loop interval is bounded by a quarter of the lock
  timeout, a standby beat says who holds the lock and keeps its heartbeat fresh, and a
  beat that loses its lock stands by instead of crashing.
* :class:`LockedDatabaseScheduler` -- django-celery-beat's ``DatabaseScheduler``
  (schedules edited at run time in the admin) with the same lock; plain
  ``DatabaseScheduler`` has none.  It is built on first use so that importing this
  module does not need Django settings.

Both use redbeat's lock key (``redbeat::lock`` by default), so a redbeat and a database
beat exclude each other as well, e.g. while switching schedulers in a rollout.

Each tick also writes ``beat-heartbeat`` (JSON) to ``CELERY_FLEET_PROBE_DIR``, read by
``celery-fleet probe-beat`` for a Kubernetes liveness probe without a broker round trip.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click
from kombu.utils.url import maybe_sanitize_url
from redbeat.schedulers import RedBeatScheduler, ensure_conf, get_redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from celery_fleet.cli_options import probe_dir_option
from celery_fleet.lifecycle import probe_dir

logger = logging.getLogger("celery_fleet.beat")

#: Seconds the lock outlives a silent beat when ``redbeat_lock_timeout`` is not set.
DEFAULT_LOCK_TIMEOUT = 60.0
#: The loop interval is at most this fraction of the lock timeout: the holder refreshes
#: the lock several times before it could expire, and a standby polls as often.
LOCK_REFRESHES_PER_TIMEOUT = 4
HEARTBEAT_FILE = "beat-heartbeat"
ACTIVE, STANDBY = "active", "standby"

# Compare-and-set on the token, so a beat can only refresh or free a lock it still holds.
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class BeatLock:
    """One Redis key naming the beat that may send; only its holder can refresh or free it."""

    def __init__(self, client: Any, key: str, timeout: float, owner: str | None = None) -> None:
        if timeout <= 0:
            raise ValueError(f"beat lock timeout must be positive, not {timeout!r}")
        self.client = client
        self.key = key
        self.timeout = float(timeout)
        # Readable token: a standby can say which beat holds the lock.
        self.token = f"{owner or default_owner()}/{uuid.uuid4().hex[:8]}"
        self.held = False

    def hold(self) -> bool:
        """Refresh the lock if held, else try to take it; True if this beat holds it now.

        Raises redis connection errors; :meth:`LockGuard.may_send` treats those as "not held".
        """
        ttl_ms = max(1, int(self.timeout * 1000))
        if self.held:
            if int(self.client.eval(_EXTEND, 1, self.key, self.token, ttl_ms)):
                return True
            self.held = False
            logger.error(
                "beat: lost the lock %s (no refresh for over %.0fs?); now held by %s. "
                "This beat sends again only once it holds the lock.",
                self.key,
                self.timeout,
                self.holder() or "nobody",
            )
        self.held = bool(self.client.set(self.key, self.token, nx=True, px=ttl_ms))
        return self.held

    def release(self) -> bool:
        """Free the lock if this beat still holds it (a clean stop hands over at once)."""
        was_held, self.held = self.held, False
        if not was_held:
            return False
        return bool(int(self.client.eval(_RELEASE, 1, self.key, self.token)))

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        return None if value is None else _text(value)

    def expires_in(self) -> float | None:
        ttl = int(self.client.pttl(self.key))
        return None if ttl < 0 else ttl / 1000


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def loop_interval(max_interval: float, lock_timeout: float) -> float:
    """The longest sleep between ticks that keeps the lock fresh: at most a quarter of its timeout."""
    return max(0.5, min(float(max_interval), lock_timeout / LOCK_REFRESHES_PER_TIMEOUT))


def write_heartbeat(
    directory: Path, *, state: str, interval: float, lock_key: str, holder: str | None
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / HEARTBEAT_FILE
    tmp = path.with_suffix(".tmp")
    record = {
        "ts": time.time(),
        "state": state,
        "interval": interval,
        "lock": lock_key,
        "holder": holder,
        "pid": os.getpid(),
    }
    tmp.write_text(json.dumps(record), encoding="utf-8")
    tmp.replace(path)


class LockGuard:
    """What a scheduler's ``tick`` asks before sending: may this beat send now?"""

    def __init__(self, lock: BeatLock, interval: float, probe_dir: Path | None = None) -> None:
        self.lock = lock
        self.interval = interval
        self.probe_dir = probe_dir
        self.state: str | None = None  # None until the first tick

    def may_send(self) -> bool:
        try:
            held = self.lock.hold()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # The broker is very likely the same Redis: nothing could be sent anyway.
            logger.warning(
                "beat: Redis unreachable for the lock %s (%s); not sending this tick", self.lock.key, exc
            )
            self._set_state(STANDBY, holder="unknown (Redis unreachable)")
            return False
        if held:
            self._set_state(ACTIVE, holder=self.lock.token)
            return True
        self._set_state(STANDBY, holder=self._holder())
        return False

    def _holder(self) -> str | None:
        try:
            return self.lock.holder()
        except (RedisConnectionError, RedisTimeoutError):
            return None

    def _set_state(self, state: str, *, holder: str | None) -> None:
        if state != self.state:
            if state == ACTIVE:
                logger.info(
                    "beat: acquired the lock %s as %s: this beat sends the schedule", self.lock.key, holder
                )
            else:
                expires = None
                with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
                    expires = self.lock.expires_in()
                logger.warning(
                    "beat: standing by: another beat holds the lock %s (%s, expires in %s); "
                    "this one sends nothing until the lock is free, checking every %.1fs",
                    self.lock.key,
                    holder or "unknown",
                    "?" if expires is None else f"{expires:.0f}s",
                    self.interval,
                )
            self.state = state
        if self.probe_dir is not None:
            write_heartbeat(
                self.probe_dir, state=state, interval=self.interval, lock_key=self.lock.key, holder=holder
            )

    def release(self) -> None:
        try:
            if self.lock.release():
                logger.info("beat: released the lock %s", self.lock.key)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            logger.warning(
                "beat: could not release the lock %s (%s); it expires by itself", self.lock.key, exc
            )


_REDBEAT_SETTINGS = ("redbeat_redis_url", "redbeat_redis_options", "redbeat_key_prefix", "redbeat_lock_key")


def adopt_namespaced_redbeat_settings(app: Any) -> None:
    """Make redbeat see ``CELERY_REDBEAT_*`` Django settings as set.

    redbeat 2.4 reads the values through Celery (namespace-aware) but tests whether they are
    set against the raw key names, which carry Django's ``CELERY_`` prefix: it then warns that
    ``redbeat_redis_url`` is unset and ignores ``CELERY_REDBEAT_REDIS_OPTIONS``.  Copying the
    values under their plain names (before redbeat first reads its config) fixes both.
    """
    present = {str(key).upper() for key in app.conf}
    for name in _REDBEAT_SETTINGS:
        value = app.conf.get(name)
        if name.upper() not in present and value is not None:
            app.conf[name] = value


def _lock_timeout(app: Any) -> float:
    return float(ensure_conf(app).lock_timeout or DEFAULT_LOCK_TIMEOUT)


class LockedRedBeatScheduler(RedBeatScheduler):
    """celery-redbeat with a lock that cannot expire between ticks and a standby that says so."""

    max_interval: float
    lock_key: str | None
    lock_timeout: float

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        adopt_namespaced_redbeat_settings(app)
        super().__init__(app, *args, **kwargs)
        key = self.lock_key or ensure_conf(app).key_prefix + ":lock"
        # Not redbeat's fallback (5 x 300 s): a dead beat's lock should not block a standby for 25 min.
        timeout = _lock_timeout(app)
        self.lock_timeout = timeout
        self.max_interval = loop_interval(self.max_interval, timeout)
        self.guard = LockGuard(BeatLock(get_redis(app), key, timeout), self.max_interval, probe_dir(app))
        # redbeat's own lock handling (a blocking acquire in beat_init, extend in tick) is off:
        # it keys on ``lock_key``; the guard holds the same key instead.
        self.fleet_lock_key = key
        self.lock_key = None

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.guard.may_send():
            return self.max_interval
        return min(float(super().tick(*args, **kwargs)), self.max_interval)

    def close(self) -> None:
        self.guard.release()
        super().close()

    @property
    def info(self) -> str:
        return (
            f"       . redis -> {maybe_sanitize_url(ensure_conf(self.app).redis_url)}\n"
            f"       . lock -> `{self.fleet_lock_key}` {self.lock_timeout:.0f}s, refreshed every tick "
            f"(at most {self.max_interval:.1f}s apart)"
        )


def _build_locked_database_scheduler() -> type:
    from django_celery_beat.schedulers import DatabaseScheduler

    class LockedDatabaseScheduler(DatabaseScheduler):
        """django-celery-beat's DatabaseScheduler, sending only while it holds the beat lock."""

        max_interval: float
        lock_key: str | None
        lock_timeout: float
        _heap: list[Any] | None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            adopt_namespaced_redbeat_settings(self.app)
            conf = ensure_conf(self.app)
            timeout = _lock_timeout(self.app)
            self.lock_timeout = timeout
            self.fleet_lock_key = conf.lock_key or conf.key_prefix + ":lock"
            self.max_interval = loop_interval(self.max_interval, timeout)
            lock = BeatLock(get_redis(self.app), self.fleet_lock_key, timeout)
            self.guard = LockGuard(lock, self.max_interval, probe_dir(self.app))
            # redbeat's beat_init handler (connected on import) looks for this; None = not its lock.
            self.lock_key = None

        def tick(self, *args: Any, **kwargs: Any) -> float:
            was_active = self.guard.state == ACTIVE
            if not self.guard.may_send():
                return self.max_interval
            if not was_active:
                # Another beat sent while this one stood by: what this one loaded is stale.
                self._schedule = self.all_as_schedule()
                self._heap = []
                self._heap_invalidated = True
            interval = float(super().tick(*args, **kwargs))
            if self._dirty:
                # Record last_run_at now, not minutes later: a beat that takes over after
                # this one dies must see what was already sent.
                self.sync()
            return min(interval, self.max_interval)

        def close(self) -> None:
            self.guard.release()
            super().close()

        @property
        def info(self) -> str:
            return (
                f"       . lock -> `{self.fleet_lock_key}` {self.lock_timeout:.0f}s, refreshed every tick "
                f"(at most {self.max_interval:.1f}s apart)"
            )

    LockedDatabaseScheduler.__module__ = __name__
    LockedDatabaseScheduler.__qualname__ = "LockedDatabaseScheduler"
    return LockedDatabaseScheduler


def __getattr__(name: str) -> Any:
    # ``CELERY_BEAT_SCHEDULER=celery_fleet.beat:LockedDatabaseScheduler``: built on first use,
    # when Django is set up (the beat process), not when the CLI imports this module.
    if name == "LockedDatabaseScheduler":
        cls = _build_locked_database_scheduler()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- probe -------------------------------------------------------------------------------

#: A heartbeat may be this many loop intervals old (and at least MIN_PROBE_AGE seconds).
PROBE_INTERVALS = 3
MIN_PROBE_AGE = 30.0


def beat_probe_status(
    directory: Path, *, max_age: float | None = None, active: bool = False
) -> tuple[bool, str]:
    """Is the beat's loop ticking (and, with ``active``, holding the lock)?"""
    path = directory / HEARTBEAT_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        ts, state, interval = float(record["ts"]), str(record["state"]), float(record["interval"])
    except FileNotFoundError:
        return False, f"no beat heartbeat at {path} (beat not started, or not a celery_fleet.beat scheduler)"
    except (ValueError, KeyError, TypeError) as exc:
        return False, f"unreadable beat heartbeat at {path}: {exc!r}"
    limit = max_age if max_age is not None else max(PROBE_INTERVALS * interval, MIN_PROBE_AGE)
    age = time.time() - ts
    if age > limit:
        return False, f"beat heartbeat is {age:.0f}s old (limit {limit:.0f}s): the beat loop is stuck"
    if active and state != ACTIVE:
        return False, f"beat is {state}: the lock {record.get('lock')} is held by {record.get('holder')}"
    return True, f"ok: {state} (heartbeat {age:.1f}s ago)"


@click.command("probe-beat")
@probe_dir_option("beat")
@click.option(
    "--max-age",
    type=float,
    default=None,
    help=f"Oldest acceptable heartbeat in seconds [default: {PROBE_INTERVALS} loop intervals, "
    f"at least {MIN_PROBE_AGE:.0f}].",
)
@click.option(
    "--active",
    is_flag=True,
    help="Also fail unless this beat holds the lock (monitoring; a standby beat is healthy, "
    "so not for liveness).",
)
def probe_beat(directory: Path, max_age: float | None, active: bool) -> None:
    """Beat probe for Kubernetes exec probes: exit 0 if the beat loop ticks, 1 otherwise."""
    ok, message = beat_probe_status(directory, max_age=max_age, active=active)
    click.echo(message)
    sys.exit(0 if ok else 1)
