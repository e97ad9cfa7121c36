"""A small TCP proxy of the tests' own, to cut connections as a network does.

Clients connect to ``proxy.port``; each connection is piped to ``upstream``.  ``cut_all()``
aborts every open connection (an RST both ways, like a node or NAT dropping state);
``cut_on_reply(marker)`` aborts the connection whose *server-to-client* bytes contain
``marker``, before those bytes reach the client: a reply lost in flight, after the server
has executed the command.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from celery_fleet.local.waiting import free_port


def _abort(sock: socket.socket) -> None:
    """Cut the connection now: the peer sees it closed and reset, as on a real cut.

    ``shutdown`` first: closing a socket that another thread is blocked reading does nothing
    until that read returns, so the connection would stay up; shutdown wakes the reader and
    ends the connection at once.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class TcpProxy:
    upstream_host: str
    upstream_port: int
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    cuts: int = 0
    #: Failures of the proxy itself (accept or thread start); a run with any is suspect.
    errors: int = 0
    _pairs: list[tuple[socket.socket, socket.socket]] = field(default_factory=list)
    _markers: list[bytes] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _listener: socket.socket | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    def url(self, scheme: str = "redis", path: str = "/0") -> str:
        return f"{scheme}://{self.host}:{self.port}{path}"

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            _abort(self._listener)
        self.cut_all()

    def cut_all(self) -> int:
        """Abort every open connection; returns how many were cut."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, server in pairs:
            _abort(client)
            _abort(server)
        self.cuts += len(pairs)
        return len(pairs)

    def cut_on_reply(self, marker: bytes) -> None:
        """Abort the next connection whose server-to-client bytes contain ``marker``."""
        with self._lock:
            self._markers.append(marker)

    def pending_markers(self) -> list[bytes]:
        """Markers armed with ``cut_on_reply`` that no reply has carried yet."""
        with self._lock:
            return list(self._markers)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                if self._stopped.is_set():
                    return
                self.errors += 1  # EMFILE, ECONNABORTED...: a proxy that stops accepting hangs everyone
                time.sleep(0.05)
                continue
            try:
                # Connect upstream off the accept loop: a hung broker's full backlog must not
                # stall every other client's connect behind one.
                threading.Thread(target=self._connect, args=(client,), daemon=True).start()
            except Exception:
                self.errors += 1
                _abort(client)

    def _connect(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection((self.upstream_host, self.upstream_port), timeout=5)
            server.settimeout(None)
        except OSError:
            _abort(client)  # the broker is down: the client sees its connection refused, at once
            return
        with self._lock:
            self._pairs.append((client, server))
        threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, from_server: bool) -> None:
        while True:
            try:
                chunk = source.recv(65536)
            except OSError:
                chunk = b""
            if chunk and from_server and self._take_marker(chunk):
                self._drop_pair(source, target, cut=True)
                return
            if not chunk:
                self._drop_pair(source, target, cut=False)
                return
            try:
                target.sendall(chunk)
            except OSError:
                self._drop_pair(source, target, cut=False)
                return

    def _take_marker(self, chunk: bytes) -> bool:
        with self._lock:
            for marker in self._markers:
                if marker in chunk:
                    self._markers.remove(marker)
                    return True
        return False

    def _drop_pair(self, a: socket.socket, b: socket.socket, *, cut: bool) -> None:
        with self._lock:
            before = len(self._pairs)
            self._pairs = [p for p in self._pairs if a not in p and b not in p]
            if cut:
                self.cuts += before - len(self._pairs)
        _abort(a)
        _abort(b)
