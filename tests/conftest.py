"""Shared fixtures: a simulated task family, a meta-trained surrogate and real storages."""

from __future__ import annotations

import warnings

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
def constant_surrogate(train_md):
    """The model before stop 16 (one noise level, constant mean): its wider continuation intervals
    make the simulated family's paused runs worth resuming within a short study."""
    from optuna_quicktune.surrogate import meta_train

    return meta_train(train_md, steps=300, seed=0, noise="constant", mean="constant")


@pytest.fixture(scope="session")
def surrogate_dir(surrogate, tmp_path_factory):
    d = tmp_path_factory.mktemp("surrogate")
    surrogate.save(str(d))
    return d


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server started for the test session (CI installs the Debian package)."""
    from optuna_quicktune.pgserver import local_postgres, postgres_available

    if not postgres_available():
        pytest.skip("PostgreSQL server binaries not found: install the Debian package 'postgresql'.")
    with local_postgres() as url:
        yield url
