"""Fault injection (slow): SIGKILL workers on SQLite, a journal file and PostgreSQL; malformed inputs.

A small version of ``quicktune faults`` (docs/reliability.md has the full run's figures): real
worker processes, real storages, real SIGKILLs. It fails if a finished trial is lost, a
configuration runs twice at the same fidelity, a trial stays RUNNING after recovery, a killed run
is never run again, or a malformed input ends in a traceback or a silent misread.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from optuna_quicktune.chaos import run_chaos
from optuna_quicktune.pgserver import postgres_available

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_sigkilled_workers_lose_nothing():
    before = set(Path(tempfile.gettempdir()).glob("quicktune-faults-*"))
    storages = ["sqlite", "journal"] + (["postgresql"] if postgres_available() else [])
    report = run_chaos(storages, workers=2, kills=len(storages), trials=2, sleep=0.05, seed=1, corpus=False, log=False)
    assert set(Path(tempfile.gettempdir()).glob("quicktune-faults-*")) == before  # its storages, logs and surrogate are removed
    for name, r in report["storages"].items():
        assert r["kills"] == 1, name
        assert (r["completed_lost"], r["duplicates"], r["running_left"], r["killed_never_rerun"]) == (0, 0, 0, 0), (name, r)
        assert r["finished"] >= 2, (name, r)


def test_a_kept_folder_must_be_new_or_empty(tmp_path):
    (tmp_path / "chaos.db").write_text("an earlier run")
    with pytest.raises(ValueError, match="not empty"):
        run_chaos(["sqlite"], kills=0, trials=1, corpus=False, log=False, work=tmp_path)


@pytest.mark.timeout(900)
def test_malformed_inputs_end_in_clear_errors_or_skips(surrogate_dir, tmp_path):
    from optuna_quicktune.malformed import run_corpus

    results = run_corpus(surrogate_dir, tmp_path)
    bad = [r for r in results if r["outcome"] not in ("clear error", "skipped with reason", "handled")]
    assert not bad, bad
    assert len(results) >= 40
