"""HTTP: ``/metrics`` (any format prometheus-client negotiates, ``exporter.exposition``) and ``/healthz``
(JSON), threaded WSGI."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import ThreadingWSGIServer

from celery_fleet.exporter.exposition import CachedExposition, StartResponse, WSGIApp, metrics_app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the log."""


def exporter_app(
    registry: CollectorRegistry,
    health: Callable[[], tuple[bool, dict[str, Any]]],
    exposition: CachedExposition | None = None,
) -> WSGIApp:
    # The library's bytes, formats and gzip, without re-escaping every name and label per scrape.
    metrics = metrics_app(registry, exposition)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body: Iterable[bytes] = metrics(environ, start_response)
            return body
        if path == "/healthz":
            ok, status = health()
            payload = json.dumps(status).encode()
            start_response(
                "200 OK" if ok else "503 Service Unavailable",
                [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
            )
            return [payload]
        if path == "/":
            page = (
                b'<html><body><a href="/metrics">/metrics</a> <a href="/healthz">/healthz</a></body></html>'
            )
            start_response("200 OK", [("Content-Type", "text/html")])
            return [page]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


class ExporterServer:
    def __init__(self, app: WSGIApp, host: str, port: int) -> None:
        self.httpd: WSGIServer = make_server(
            host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.started_at = time.time()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.5)

    def start(self) -> ExporterServer:
        self._thread = threading.Thread(target=self.serve_forever, name="exporter-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
