"""The gunicorn worker class of the web tier: uvicorn's ASGI worker, draining on SIGTERM.

Under ASGI a request that waits (a long-poll) is a suspended coroutine, not a held thread, so a
few hundred waiting clients cannot starve the pages and the probes of a pod (a gthread worker has
``workers x threads`` slots in all).  Django still runs each synchronous view in a thread of its
own, so sync code keeps working unchanged.

uvicorn installs its own SIGTERM handler while it serves (a handler set in gunicorn's
``post_worker_init`` would be replaced), so the flag that turns ``/readyz`` to 503 is set from
uvicorn's exit handler here.  uvicorn then stops accepting, lets in-flight requests finish and
exits; gunicorn's ``graceful_timeout`` bounds the wait.
"""

from __future__ import annotations

from types import FrameType
from typing import Any

from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from celery_fleet.health import shutting_down


class _DrainingServer(Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        shutting_down.set()
        super().handle_exit(sig, frame)


class DrainingUvicornWorker(UvicornWorker):
    # Django's ASGI handler does not speak the lifespan protocol: don't probe it at every start.
    CONFIG_KWARGS: dict[str, Any] = {"loop": "auto", "http": "auto", "lifespan": "off"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # gunicorn's per-worker connection limit becomes uvicorn's: beyond it new requests get a
        # 503 at once instead of each taking a thread (Django runs sync views one thread each).
        self.config.limit_concurrency = self.cfg.worker_connections

    async def _serve(self) -> None:
        # As UvicornWorker._serve, with the server that flags the shutdown.
        self.config.app = self.wsgi
        server = _DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            import sys

            from gunicorn.arbiter import Arbiter

            sys.exit(Arbiter.WORKER_BOOT_ERROR)
