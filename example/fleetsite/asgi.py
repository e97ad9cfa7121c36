"""The web application gunicorn serves (``celery_fleet.gunicorn_conf``: uvicorn's ASGI workers)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleetsite.settings")
# Under ASGI every request runs its synchronous parts in a thread of its own, so a connection kept
# open for the next request would outlive its thread: close it at the end of each, and on
# PostgreSQL take connections from psycopg's pool instead of opening one per request (Django's
# advice for ASGI). Workers, which run tasks on long-lived threads (and fork their pool
# processes, which must not share a pool's sockets), keep persistent connections.
os.environ.setdefault("DB_CONN_MAX_AGE", "0")
os.environ.setdefault("DB_POOL", "1")

application = get_asgi_application()
