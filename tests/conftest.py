"""Shared fixtures: a simulated task family, a meta-trained surrogate and real storages."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import pytest

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

N_TASKS = 10
HELD_OUT = 5  # its best learning rate is half a decade from the average of the others (visible only through meta-features)
FIDELITY = 10


@pytest.fixture(scope="session")
def family():
    from optuna_quicktune.simulate import SimulatedFamily

    return SimulatedFamily(N_TASKS, fidelity_max=FIDELITY, seed=0)


@pytest.fixture(scope="session")
def full_md(family):
    return family.metadataset(48, seed=1)


@pytest.fixture(scope="session")
def train_md(full_md):
    return full_md.select_tasks([i for i in range(N_TASKS) if i != HELD_OUT])


@pytest.fixture(scope="session")
def surrogate(train_md):
    from optuna_quicktune.surrogate import meta_train

    return meta_train(train_md, steps=300, seed=0)


@pytest.fixture(scope="session")
def surrogate_dir(surrogate, tmp_path_factory):
    d = tmp_path_factory.mktemp("surrogate")
    surrogate.save(str(d))
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A real PostgreSQL server started for the test session (CI installs the Debian package)."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL server binaries not found: install the Debian package 'postgresql'.")
    bindir = Path(bins[-1]).parent
    # Not under pytest's tmp dir: that is private to the (root) user, and the server runs as 'postgres'.
    base = Path(tempfile.mkdtemp(prefix="quicktune-pg-"))
    data, sock = base / "data", base / "sock"
    data.mkdir()
    sock.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(base, "postgres")
        shutil.chown(data, "postgres")
        shutil.chown(sock, "postgres")
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
