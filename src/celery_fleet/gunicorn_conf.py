"""gunicorn settings for any Django project, from the environment
(``gunicorn --config python:celery_fleet.gunicorn_conf PROJECT.asgi:application``).

The workers are uvicorn's ASGI workers (``celery_fleet.gunicorn_worker``): a waiting request
costs a coroutine, not a thread.  On SIGTERM gunicorn stops accepting, finishes in-flight
requests (up to ``graceful_timeout``) and exits; each worker also flips ``/readyz`` to 503 the
moment the signal arrives, so a load balancer that still routes here drops the endpoint first.
"""

from __future__ import annotations

from celery_fleet.env import env

bind = env.str(
    "GUNICORN_BIND", f"{env.str('WEB_HOST', '0.0.0.0')}:{env.int('PORT', 8000, minimum=1, maximum=65535)}"
)
workers = env.int("WEB_CONCURRENCY", 2, minimum=1)
worker_class = "celery_fleet.gunicorn_worker.DrainingUvicornWorker"
# Requests one worker serves at once; beyond it uvicorn answers 503 at once.
worker_connections = env.int("GUNICORN_WORKER_CONNECTIONS", 1000, minimum=1)
# Restart a worker whose event loop is blocked this long; slow work belongs in Celery, not here.
timeout = env.int("GUNICORN_TIMEOUT", 30, minimum=1)
# Seconds in-flight requests get to finish after SIGTERM (keep below the pod's grace period).
graceful_timeout = env.int("GUNICORN_GRACEFUL_TIMEOUT", 20, minimum=1)
keepalive = env.int("GUNICORN_KEEPALIVE", 5, minimum=0)
max_requests = env.int("GUNICORN_MAX_REQUESTS", 2000, minimum=0)
max_requests_jitter = env.int("GUNICORN_MAX_REQUESTS_JITTER", 200, minimum=0)
accesslog = env.str("GUNICORN_ACCESSLOG", "-") or None
errorlog = "-"
loglevel = env.str("GUNICORN_LOGLEVEL", "info")
# /dev/shm keeps the worker heartbeat off a possibly read-only or slow disk.
worker_tmp_dir = env.str("GUNICORN_WORKER_TMP_DIR", "/dev/shm")
forwarded_allow_ips = env.str("FORWARDED_ALLOW_IPS", "127.0.0.1")

# No gunicornc control socket: nothing here uses it, and the root filesystem may be read-only.
control_socket_disable = True
