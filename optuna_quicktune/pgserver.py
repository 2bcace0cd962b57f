"""A throw-away local PostgreSQL server (Debian's ``postgresql`` package), for tests and ``quicktune faults``.

Why here and not only in the tests: the fault-injection command measures PostgreSQL like SQLite
and journal files, on a machine without a database service; it starts its own server the way the
test suite does.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["postgres_available", "local_postgres"]


def _bindir() -> Path | None:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(bins[-1]).parent if bins else None


def postgres_available() -> bool:
    return _bindir() is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_postgres() -> Iterator[str]:
    """Start a server with a ``quicktune`` database; yields its SQLAlchemy URL; stops and deletes it."""
    bindir = _bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries not found: install the Debian package 'postgresql'.")
    # Not under a private tmp dir: when run as root the server runs as 'postgres' and must reach it.
    base = Path(tempfile.mkdtemp(prefix="quicktune-pg-"))
    data, sock = base / "data", base / "sock"
    data.mkdir()
    sock.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        for p in (base, data, sock):
            shutil.chown(p, "postgres")
        os.chmod(data, 0o700)
        run_as = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    log = data / "server.log"
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
                    f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        for _ in range(50):
            r = subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "quicktune"],
                               capture_output=True)
            if r.returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"createdb failed: {r.stderr.decode()}")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/quicktune"
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
