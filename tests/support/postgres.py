"""A throwaway PostgreSQL server (Debian's binaries) on a free loopback port."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from celery_fleet.local.waiting import free_port, wait_until


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@dataclass
class PostgresServer:
    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/fleet"

    def _as_owner(self, argv: list[str]) -> list[str]:
        # PostgreSQL refuses to run as root; as root, run it as the `postgres` system user.
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    @classmethod
    def start(cls) -> PostgresServer:
        initdb, postgres = pg_bin("initdb"), pg_bin("postgres")
        if not initdb or not postgres:
            raise FileNotFoundError("PostgreSQL server binaries not found: apt-get install -y postgresql")
        root = Path(tempfile.mkdtemp(prefix="fleet-pg-", dir="/tmp"))
        server = cls(root=root, port=free_port())
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(root, owner.pw_uid, owner.pw_gid)
        data = root / "data"
        subprocess.run(
            server._as_owner([initdb, "-D", str(data), "--auth=trust", "-U", "postgres", "--no-sync"]),
            check=True,
            capture_output=True,
        )
        server.process = subprocess.Popen(
            server._as_owner(
                [
                    postgres,
                    "-D",
                    str(data),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(server.port),
                    "-k",
                    str(root),
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import psycopg

        def ready() -> bool:
            with psycopg.connect(
                f"postgresql://postgres@127.0.0.1:{server.port}/postgres", connect_timeout=1
            ) as conn:
                conn.execute("SELECT 1")
            return True

        wait_until(ready, timeout=60, what="PostgreSQL to accept connections")
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{server.port}/postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE fleet")
        return server

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.root, ignore_errors=True)
