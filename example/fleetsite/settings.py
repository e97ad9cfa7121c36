"""Settings for the example project, all from the environment (12-factor).

Every value goes through :mod:`celery_fleet.env`: ``NAME`` or ``NAME_FILE``, and a
bad value raises ``ImproperlyConfigured`` naming the variable.
"""

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from celery_fleet import outbox
from celery_fleet.django.security import https_settings
from celery_fleet.env import env
from celery_fleet.presets import safe_delivery_settings
from celery_fleet.timings import Timings, TimingsError

BASE_DIR = Path(__file__).resolve().parent.parent

# The example's queues: user jobs, CSV exports, periodic housekeeping (each its own worker group).
DEFAULT_QUEUE = "default"
EXPORTS_QUEUE = "exports"
PERIODIC_QUEUE = "periodic"

DEBUG = env.bool("DEBUG", False)
# The fleet's data folder: SQLite database and local broker data on one machine.
DATA_DIR = Path(env.str("CELERY_FLEET_DATA_DIR", str(BASE_DIR.parent / ".fleet"))).resolve()

if DEBUG:
    SECRET_KEY = env.str("SECRET_KEY", "insecure-dev-key-only-for-debug")
else:
    SECRET_KEY = env.required_str("SECRET_KEY", "it signs sessions and CSRF tokens; DEBUG is off")

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if not DEBUG else ["*"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", [])

# --- HTTPS behind the TLS-terminating proxy --------------------------------------------------
# SSL redirect, HSTS and secure cookies from SECURE_* / *_COOKIE_SECURE (off unless set; the chart
# sets them when its ingress has TLS). gunicorn tells Django the scheme, trusting X-Forwarded-Proto
# only from FORWARDED_ALLOW_IPS (celery_fleet.django.security explains why not SECURE_PROXY_SSL_HEADER).
globals().update(https_settings())

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    # The JSON API (jobs/api.py); in INSTALLED_APPS so its Swagger UI comes from its own static files.
    "ninja",
    # /healthz and /readyz (celery_fleet.django.urls), shared by every project on celery-fleet.
    "celery_fleet.django",
    "jobs",
]

# Every middleware here works in async mode: one sync-only middleware would make each request hold a
# thread for its whole length under ASGI, long-polls included (hence servestatic, not whitenoise).
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # HEAD wherever GET, JSON errors under /api/ (jobs/middleware.py).
    "jobs.middleware.api_http_rules",
]

ROOT_URLCONF = "fleetsite.urls"
WSGI_APPLICATION = "fleetsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_database_url = env.str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}")
try:
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=env.int("DB_CONN_MAX_AGE", 60))}
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {exc}") from exc
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web and several worker processes write at once: wait for the lock and take it up front.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
elif env.bool("DB_POOL", False):
    # psycopg's connection pool (the web: fleetsite/asgi.py turns it on).  Under ASGI every request
    # runs in a thread of its own, so a persistent connection dies with its thread and each request
    # would open a new one (a PostgreSQL backend forked and authenticated per request); the pool
    # hands a connection to each request and takes it back at its end.  Django wants
    # CONN_MAX_AGE 0 with a pool.
    _pool_min = env.int("DB_POOL_MIN_SIZE", 1, minimum=0)
    _pool_max = env.int("DB_POOL_MAX_SIZE", 10, minimum=1)
    if _pool_min > _pool_max:
        raise ImproperlyConfigured("DB_POOL_MIN_SIZE must not be larger than DB_POOL_MAX_SIZE")
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": _pool_min,
        "max_size": _pool_max,
        # Seconds a request waits for a free connection before it fails (a 503, not a hang).
        "timeout": env.int("DB_POOL_TIMEOUT", 10, minimum=1),
    }
else:
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", str(DATA_DIR / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "servestatic.storage.CompressedStaticFilesStorage"},
}
# Serve static files from the app folders without collectstatic (one machine, tests, the image).
SERVESTATIC_USE_FINDERS = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # 4xx are in gunicorn's access log already (one line per request); 5xx keep their traceback.
        "django.request": {"level": "ERROR"},
    },
}

# --- Jobs -------------------------------------------------------------------------------
JOBS_USERS_MIN = 50
JOBS_USERS_MAX = 500
# Longest sleep a timed_work job (load and fault tests) may ask for; the API's schema says so.
JOBS_TIMED_WORK_MAX = env.float("JOBS_TIMED_WORK_MAX", 60.0, minimum=0)
# Export reports older than this are removed by the periodic cleanup task.
EXPORT_MAX_AGE_HOURS = env.float("EXPORT_MAX_AGE_HOURS", 24.0, minimum=0)
# Where the periodic database backup writes its dumps.
BACKUP_DIR = Path(env.str("BACKUP_DIR", str(DATA_DIR / "backups")))
BACKUP_KEEP = env.int("BACKUP_KEEP", 24, minimum=1)
# Seconds a fake "slow" step in the demo tasks sleeps per batch, so progress is visible.
JOBS_STEP_DELAY = env.float("JOBS_STEP_DELAY", 0.05, minimum=0)

# --- Celery -----------------------------------------------------------------------------
try:
    WORKER_TIMINGS = Timings(
        soft_time_limit=env.int("CELERY_TASK_SOFT_TIME_LIMIT", 240, minimum=1),
        time_limit=env.int("CELERY_TASK_TIME_LIMIT", 300, minimum=1),
        drain_window=env.int("CELERY_FLEET_DRAIN_WINDOW", 30, minimum=0),
        grace_period=env.int("CELERY_FLEET_GRACE_PERIOD", 0, minimum=0) or None,
        visibility_timeout=env.int("CELERY_FLEET_VISIBILITY_TIMEOUT", 0, minimum=0) or None,
    ).validated()
except TimingsError as exc:
    raise ImproperlyConfigured(str(exc)) from exc

# The broker: redis:// (the default) or amqp:// for RabbitMQ.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
# Where workers announce job changes and long-polls hear them (Redis pub/sub): the broker's Redis
# unless set; "off" (or a RabbitMQ broker) and long-polls re-read the database every second instead.
_notify_url = env.str("JOBS_NOTIFY_REDIS_URL", "")
if _notify_url == "off":
    JOBS_NOTIFY_REDIS_URL = ""
else:
    JOBS_NOTIFY_REDIS_URL = _notify_url or (
        CELERY_BROKER_URL if CELERY_BROKER_URL.startswith("redis") else ""
    )
# Seconds between a long-poll's safety re-reads of its job while notifications flow (a lost
# message costs at most this); without notifications it re-reads every second.
JOBS_LONGPOLL_RECHECK = env.float("JOBS_LONGPOLL_RECHECK", 5.0, minimum=0.1)
# Safe delivery: late acks, reject on worker lost, prefetch 1, JSON only, limits, visibility.
globals().update(safe_delivery_settings(broker_url=CELERY_BROKER_URL, timings=WORKER_TIMINGS))
# Unnamed tasks go to the default queue; users' jobs must not wait behind exports or the schedule.
CELERY_TASK_DEFAULT_QUEUE = DEFAULT_QUEUE
# Heavy exports and periodic housekeeping get queues of their own, scaled separately.
CELERY_TASK_ROUTES = {
    "jobs.tasks.export_users": {"queue": EXPORTS_QUEUE},
    "jobs.tasks.cleanup_exports": {"queue": PERIODIC_QUEUE},
    "jobs.tasks.backup_database": {"queue": PERIODIC_QUEUE},
    "jobs.tasks.sweep_outbox": {"queue": PERIODIC_QUEUE},
}
# Beat on Redis with a lock held every loop (celery-redbeat, wrapped): a second beat stands by.
CELERY_BEAT_SCHEDULER = env.str("CELERY_BEAT_SCHEDULER", "celery_fleet.beat.LockedRedBeatScheduler")
# Seconds the beat lock outlives a silent beat before another beat may take over.
CELERY_REDBEAT_LOCK_TIMEOUT = env.int("CELERY_REDBEAT_LOCK_TIMEOUT", 60, minimum=5)
# Where beat keeps schedules and its lock: the broker's Redis unless set.
CELERY_REDBEAT_REDIS_URL = env.str("CELERY_REDBEAT_REDIS_URL", "") or CELERY_BROKER_URL
# Fail fast on a dead connection instead of hanging the scheduler loop.
CELERY_REDBEAT_REDIS_OPTIONS = {
    "socket_timeout": 15,
    "socket_connect_timeout": 5,
    "health_check_interval": 25,
}
# No result backend: without this beat adds a daily celery.backend_cleanup on the default queue.
CELERY_RESULT_EXPIRES = None
# A job that has shown no sign of life this long, and that the broker holds nowhere, is published
# again by the outbox sweep (celery_fleet.outbox: the grace period; short timings, short bound).
OUTBOX_REPUBLISH_AFTER = outbox.republish_after(WORKER_TIMINGS)
OUTBOX_SWEEP_EVERY = outbox.sweep_interval(WORKER_TIMINGS)
# Periodic work from settings; people who edit schedules at run time use django-celery-beat.
CELERY_BEAT_SCHEDULE = {
    "cleanup-exports": {
        "task": "jobs.tasks.cleanup_exports",
        "schedule": env.float("CLEANUP_EXPORTS_EVERY", 3600.0, minimum=1),
        # A run that waited a whole interval is superseded by the next one: don't pile them up.
        "options": {"expires": env.float("CLEANUP_EXPORTS_EVERY", 3600.0, minimum=1)},
    },
    "backup-database": {
        "task": "jobs.tasks.backup_database",
        "schedule": env.float("BACKUP_DATABASE_EVERY", 3600.0, minimum=1),
        "options": {"expires": env.float("BACKUP_DATABASE_EVERY", 3600.0, minimum=1)},
    },
    # The outbox: publish again the jobs whose message the broker lost (jobs.services.sweep_outbox).
    "sweep-outbox": {
        "task": "jobs.tasks.sweep_outbox",
        "schedule": float(OUTBOX_SWEEP_EVERY),
        "options": {"expires": float(OUTBOX_SWEEP_EVERY)},
    },
}
# Queues the exporter and autoscaler watch even when no worker consumes them.
CELERY_FLEET_QUEUES = env.list("CELERY_FLEET_QUEUES", [DEFAULT_QUEUE, EXPORTS_QUEUE, PERIODIC_QUEUE])
# A stopping worker exits as soon as its running tasks end (celery_fleet.drain); off, it waits the
# whole drain window as Celery does (kept for side-by-side benchmarks: bench/drain.py).
CELERY_FLEET_DRAIN_ENDS_WITH_WORK = env.bool("CELERY_FLEET_DRAIN_ENDS_WITH_WORK", True)
# Folder of the worker's liveness heartbeat and readiness files (probes read them).
CELERY_FLEET_PROBE_DIR = env.str("CELERY_FLEET_PROBE_DIR", "")
