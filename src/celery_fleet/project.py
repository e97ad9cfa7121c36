"""The user's Django + Celery project: the names every role needs to run it.

celery-fleet never imports a project of its own; the user names theirs (``celery-fleet up --app
PROJECT``, the chart's ``app.*`` values).  The defaults follow ``django-admin startproject`` and
Celery's "First steps with Django": ``PROJECT/celery.py`` defines the app, ``PROJECT/asgi.py``
the ASGI application and ``PROJECT/settings.py`` the settings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class ProjectError(ValueError):
    """A project name that cannot be a Python module path (message says which and why)."""


def _dotted(what: str, value: str) -> str:
    if not _DOTTED.match(value):
        raise ProjectError(f"{what} must be a dotted Python module path like 'myproject', got {value!r}")
    return value


@dataclass(frozen=True)
class Project:
    #: What ``celery -A`` takes: a module (or ``module:attribute``) holding the Celery app.
    celery_app: str
    #: ``module:attribute`` of the ASGI application gunicorn serves.
    asgi_application: str
    #: ``DJANGO_SETTINGS_MODULE``.
    settings_module: str

    @classmethod
    def named(
        cls, celery_app: str, *, asgi_application: str | None = None, settings_module: str | None = None
    ) -> Project:
        """The project ``celery_app``, with Django's conventional module names for what is not given."""
        module, _, attribute = celery_app.partition(":")
        _dotted("the Celery app", module)
        if attribute:
            _dotted("the Celery app's attribute", attribute)
        package = module.split(".")[0]
        web_app = asgi_application or f"{package}.asgi:application"
        app_module, colon, app_attribute = web_app.partition(":")
        _dotted("the ASGI application's module", app_module)
        if not colon or not app_attribute:
            raise ProjectError(f"the ASGI application must be 'module:attribute', got {web_app!r}")
        settings = _dotted("the settings module", settings_module or f"{package}.settings")
        return cls(celery_app=celery_app, asgi_application=web_app, settings_module=settings)


def load_celery_app(name: str) -> Celery:
    """The Celery app named as ``celery -A`` names it (Celery's own lookup rules)."""
    from celery.app.utils import find_app

    app = find_app(name)
    if not isinstance(app, Celery):
        raise ProjectError(f"{name!r} is not a Celery app")
    return app


def declared_queues(app: Celery) -> list[str]:
    """The queues a Celery app sends to, in a stable order: its default queue first.

    ``fleet_queues`` (``CELERY_FLEET_QUEUES`` in Django settings) wins when the project sets it;
    otherwise the default queue, ``task_queues``, the queues named by ``task_routes`` and by the
    beat schedule's options.  Router functions cannot be read without calling them: a project
    that routes by function lists its queues in ``CELERY_FLEET_QUEUES``.
    """
    conf = app.conf
    explicit = conf.get("fleet_queues")
    if explicit:
        return _unique(str(q) for q in explicit)
    names: list[str] = [conf.task_default_queue]
    names += [queue.name for queue in conf.task_queues or ()]
    names += _route_queues(conf.task_routes)
    for entry in (conf.beat_schedule or {}).values():
        queue = (entry.get("options") or {}).get("queue")
        if queue:
            names.append(queue)
    return _unique(names)


def _route_queues(routes: Any) -> Iterator[str]:
    if isinstance(routes, Mapping):
        for target in routes.values():
            queue = target.get("queue") if isinstance(target, Mapping) else None
            if isinstance(queue, str):
                yield queue
            elif queue is not None and hasattr(queue, "name"):
                yield queue.name
    elif isinstance(routes, (list, tuple)):
        for router in routes:
            yield from _route_queues(router)


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(n for n in names if n))
