"""A throwaway PostgreSQL server for running the integration suite on a PostgreSQL SQL catalog.

Uses the machine's PostgreSQL binaries (Debian `postgresql`); the server runs as the `postgres` user (initdb refuses
root), listens on 127.0.0.1 only, trusts local connections, and is stopped at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _bin(name: str) -> str:
    for folder in PG_BIN_CANDIDATES:
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install PostgreSQL (apt-get install postgresql) to run these tests")
    return found


def _as_postgres(args: list[str]) -> list[str]:
    return args if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *args]


class PostgresServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]

    def start(self) -> PostgresServer:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self.root.chmod(0o700)
        run = dict(check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        subprocess.run(_as_postgres([_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"]), **run)
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off -c max_connections=200"
        log = self.root / "server.log"
        subprocess.run(
            _as_postgres([_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(log), "-w", "start"]), **run
        )
        return self

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self) -> str:
        """A fresh database per test; returns its SQLAlchemy URI for pyiceberg's SQL catalog."""
        name = f"k2_{uuid.uuid4().hex[:12]}"
        for attempt in range(20):
            result = subprocess.run(
                [
                    _bin("psql"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "-c",
                    f"CREATE DATABASE {name}",
                ],
                capture_output=True,
            )
            if result.returncode == 0:
                return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{name}"
            time.sleep(0.1 * (attempt + 1))
        raise RuntimeError(f"could not create database {name}: {result.stderr.decode()}")
