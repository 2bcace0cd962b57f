"""The storage contract and the faults of issue 14: each finding has a test here that failed before.

Findings: (1) a diverged run was never stopped; (2) errors while the sampler prepared a trial left
it RUNNING; (3) a killed worker's trial stayed RUNNING with a plain URL; (4) one malformed study
broke or skewed the meta-dataset read; (5) storage mistakes gave tracebacks or new databases;
(6) malformed surrogate files and meta-feature values; (7) multi-objective studies and huge steps.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from optuna_quicktune import QuickTunePruner, QuickTuneSampler, contract, load_surrogate
from optuna_quicktune.cli import main
from optuna_quicktune.errors import ContractError, QuickTuneError, SurrogateFormatError
from optuna_quicktune.malformed import objective_reporting
from optuna_quicktune.metadataset import MetaDataset
from optuna_quicktune.recovery import recover_stale_trials
from optuna_quicktune.simulate import SimulatedObjective
from tests.conftest import HELD_OUT

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _sampler(family, surrogate, **kw):
    return QuickTuneSampler(surrogate, metafeatures=kw.pop("metafeatures", family.tasks[HELD_OUT].metafeatures),
                            n_candidates=50, seed=0, **kw)


_reporting = objective_reporting


# ---------------------------------------------------------------------- finding 1
@pytest.mark.parametrize("bad", [-math.inf, math.nan])
def test_diverged_run_is_stopped_at_the_step_it_appears(family, surrogate, bad):
    sampler = _sampler(family, surrogate)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=QuickTunePruner(sampler, min_steps=3))
    study.optimize(_reporting({1: 0.3, 2: bad, 3: 0.4, 4: 0.5}), n_trials=1)
    t = study.trials[0]
    assert t.state == TrialState.PRUNED and t.last_step == 2


def test_minimising_study_stops_plus_inf(family, surrogate):
    sampler = _sampler(family, surrogate)
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=QuickTunePruner(sampler, min_steps=3))
    study.optimize(_reporting({1: 0.3, 2: math.inf, 3: 0.4}), n_trials=1)
    assert study.trials[0].state == TrialState.PRUNED and study.trials[0].last_step == 2


def test_diverged_paused_run_is_never_resumed(family, surrogate):
    sampler = _sampler(family, surrogate)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=QuickTunePruner(sampler))

    def objective(trial):
        from optuna_quicktune.space import lora_space

        lora_space().suggest(trial)
        trial.report(math.nan, 1)
        trial.set_user_attr(contract.CHECKPOINT, "ckpt")
        raise optuna.TrialPruned()

    study.optimize(objective, n_trials=1)
    assert not study.trials[0].user_attrs.get(contract.PAUSED)
    assert all(a.kind == "new" for a in sampler.rank_actions(study))


# ---------------------------------------------------------------------- finding 2
@pytest.mark.parametrize("attrs", [
    {contract.METAFEATURES: {"lr_hint": "abc"}},
    {contract.METAFEATURES: [1, 2]},
    {contract.FIDELITY: {"unit": "epoch", "max": "abc"}},
    {contract.FIDELITY: {"unit": "epoch", "max": 0}},
    {contract.FIDELITY: {"unit": "epoch", "max": -3}},
    {contract.FIDELITY: {"unit": "epoch", "max": 1000}},  # beyond the surrogate's 10
], ids=["mf-abc", "mf-list", "fid-abc", "fid-0", "fid-neg", "fid-too-long"])
def test_sampler_errors_never_leave_a_running_trial(family, surrogate, attrs, tmp_path):
    metafeatures = None if contract.METAFEATURES in attrs else family.tasks[HELD_OUT].metafeatures
    sampler = _sampler(family, surrogate, metafeatures=metafeatures)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'x.db'}", direction="maximize", sampler=sampler)
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    for _ in range(2):
        with pytest.raises(ContractError) as err:
            study.ask()
        assert next(iter(attrs)) in str(err.value)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 2 and all(next(iter(attrs)) in t.user_attrs[contract.FAIL_REASON] for t in failed)


# ---------------------------------------------------------------------- finding 3 (fast; SIGKILL loop in test_faults)
def test_trial_of_a_dead_worker_is_recovered_and_run_again_once(family, surrogate, tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    task = family.tasks[HELD_OUT]
    code = (
        "import os, signal, sys, warnings, optuna; warnings.filterwarnings('ignore');"
        "from optuna_quicktune import QuickTuneSampler, load_surrogate;"
        f"s = QuickTuneSampler(load_surrogate(sys.argv[1]), metafeatures={dict(task.metafeatures)!r}, n_candidates=50, seed=0);"
        f"st = optuna.create_study(study_name='s', storage={url!r}, direction='maximize', sampler=s);"
        "t = st.ask(); from optuna_quicktune.space import lora_space; lora_space().suggest(t); t.report(0.1, 1);"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    surrogate_dir = tmp_path / "sur"
    surrogate.save(surrogate_dir)
    r = subprocess.run([sys.executable, "-c", code, str(surrogate_dir)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    study = optuna.load_study(study_name="s", storage=url, sampler=_sampler(family, surrogate))
    dead = study.trials[0]
    assert dead.state == TrialState.RUNNING  # plain URL, no heartbeat: before, it stayed so forever
    study.optimize(SimulatedObjective(task), n_trials=2)  # a worker's next trial recovers it; the one after reruns it
    trials = study.trials
    assert trials[0].state == TrialState.FAIL and "died" in trials[0].user_attrs[contract.FAIL_REASON]
    retry = [t for t in trials if t.user_attrs.get(contract.RETRY_OF) == 0]
    assert len(retry) == 1 and retry[0].params == dead.params and retry[0].state == TrialState.COMPLETE
    assert recover_stale_trials(study, grace_period=0.0) == []  # nothing else is stale; no second retry


# ---------------------------------------------------------------------- finding 4
@pytest.mark.parametrize("attrs", [
    {contract.FIDELITY: {"unit": "epoch", "max": float("nan")}},
    {contract.FIDELITY: {"unit": "epoch", "max": float("inf")}},
    {contract.FIDELITY: {"unit": "epoch", "max": 2.5}},
    {contract.TASK: {"dataset": "d", "model": "m", "metric": "s", "direction": "sideways"}},
], ids=["fid-nan", "fid-inf", "fid-2.5", "sideways"])
def test_one_bad_study_is_skipped_with_a_reason(family, tmp_path, caplog, attrs):
    storage = f"sqlite:///{tmp_path / 'x.db'}"
    names = family.metadataset(4, seed=0, tasks=[0, 1]).to_storage(storage)
    bad = optuna.load_study(study_name=names[1], storage=storage)
    for k, v in attrs.items():
        bad.set_user_attr(k, v)
    with caplog.at_level(logging.WARNING, logger="optuna_quicktune.metadataset"):
        md = MetaDataset.from_storage(storage)
    assert [t.name for t in md.tasks] == [names[0]]
    assert names[1] in caplog.text and next(iter(attrs)) in caplog.text


@pytest.mark.parametrize("value", ["abc", [1], True, 99])
def test_bad_resume_of_skips_that_trial_only(family, tmp_path, caplog, value):
    storage = f"sqlite:///{tmp_path / 'x.db'}"
    names = family.metadataset(3, seed=0, tasks=[0]).to_storage(storage)
    study = optuna.load_study(study_name=names[0], storage=storage)
    t = study.trials[0]
    study.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=1.0,
                                              intermediate_values={1: 0.5}, user_attrs={contract.RESUME_OF: value}))
    with caplog.at_level(logging.INFO, logger="optuna_quicktune.metadataset"):
        md = MetaDataset.from_storage(storage)
    assert len(md.runs) == 3 and contract.RESUME_OF in caplog.text
    # and the sampler's view of the same study reads it as a run of its own instead of failing
    from optuna_quicktune.study_state import StudyState

    state = StudyState.build(study.get_trials(), family.space, 1.0)
    assert state.trials[3].resume_of is None


def test_read_task_returns_typed_values(family, tmp_path):
    study = optuna.create_study(direction="minimize")
    contract.describe_task(study, dataset="d", model="m", metric="loss", fidelity_max=4, metafeatures={"a": 1})
    info = contract.read_task(study)
    assert (info.direction, info.fidelity_max, info.metafeatures, info.sign) == ("minimize", 4, {"a": 1.0}, -1.0)
    with pytest.raises(ContractError, match="whole number"):
        contract.describe_task(optuna.create_study(), dataset="d", model="m", metric="x", fidelity_max=2.5)


# ---------------------------------------------------------------------- finding 5
@pytest.mark.parametrize("url", ["sqlite:///{tmp}/missing/x.db", "nonsense://x", "::::", "sqlite:///{tmp}/typo.db",
                                 "sqlite:///{tmp}/notdb.txt", "journal:{tmp}/nope.log"])
def test_cli_storage_mistakes_are_one_line_and_create_nothing(tmp_path, url, capsys):
    (tmp_path / "notdb.txt").write_text("hello")
    before = sorted(p.name for p in tmp_path.iterdir())
    url = url.format(tmp=tmp_path)
    assert main(["meta-train", "--storage", url, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "error:" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_dashboard_on_a_mistyped_path_is_an_error_not_an_empty_file(tmp_path, capsys):
    pytest.importorskip("optuna_dashboard")
    assert main(["dashboard", f"sqlite:///{tmp_path / 'typo.db'}"]) == 2
    assert not (tmp_path / "typo.db").exists() and "No database" in capsys.readouterr().err


# ---------------------------------------------------------------------- finding 6
def _broken_copy(surrogate_dir, tmp_path, text):
    import shutil

    d = tmp_path / "bad"
    shutil.copytree(surrogate_dir, d)
    (d / "surrogate.json").write_text(text)
    return d


@pytest.mark.parametrize("text", ["[1, 2]", "null", '"x"'])
def test_surrogate_json_that_is_not_an_object(surrogate_dir, tmp_path, text):
    with pytest.raises(SurrogateFormatError, match="not the object"):
        load_surrogate(str(_broken_copy(surrogate_dir, tmp_path, text)))


@pytest.mark.parametrize("version", [-5, 0, True])
def test_format_version_must_be_a_positive_whole_number(surrogate_dir, tmp_path, version):
    config = json.loads((surrogate_dir / "surrogate.json").read_text())
    config["format_version"] = version
    with pytest.raises(SurrogateFormatError, match="format_version"):
        load_surrogate(str(_broken_copy(surrogate_dir, tmp_path, json.dumps(config))))


@pytest.mark.parametrize("value", ["abc", None, 1e300, math.inf])
def test_metafeature_values_are_named_in_errors(family, surrogate, value):
    mf = dict(family.tasks[HELD_OUT].metafeatures)
    mf["lr_hint"] = value
    with pytest.raises(ContractError, match="lr_hint"):
        QuickTuneSampler(surrogate, metafeatures=mf)


def test_fidelity_max_must_be_whole(family):
    with pytest.raises(ContractError, match="2.5"):
        contract.parse_fidelity({"unit": "epoch", "max": 2.5})
    assert contract.parse_fidelity({"unit": "epoch", "max": 3.0}) == ("epoch", 3)


# ---------------------------------------------------------------------- finding 7
def test_multi_objective_is_refused_without_running_trials(family, surrogate, tmp_path):
    sampler = _sampler(family, surrogate)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'x.db'}", directions=["maximize", "minimize"], sampler=sampler)
    with pytest.raises(ContractError, match="objectives"):
        study.ask()
    assert not study.get_trials(states=(TrialState.RUNNING,))
    frozen = study.trials[0]
    with pytest.raises(ContractError):
        sampler.sample_relative(study, frozen, dict(family.space.distributions))
    with pytest.raises(ContractError):
        sampler.sample_independent(study, frozen, "x", optuna.distributions.FloatDistribution(0, 1))


def test_a_huge_step_does_not_allocate_or_break_later_trials(family, surrogate):
    sampler = _sampler(family, surrogate)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=QuickTunePruner(sampler))
    t0 = time.perf_counter()
    study.optimize(_reporting({1: 0.3, 10**9: 0.4, 10**9 + 1: 0.5}), n_trials=3)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert time.perf_counter() - t0 < 60  # a 10**9 array took minutes (7.45 GiB), or failed every later ask
    from optuna_quicktune.study_state import StudyState

    state = StudyState.build(study.get_trials(), family.space, 1.0)
    assert len(state.trials[0].prefix) == 1 and 10**9 in state.best_at


# ---------------------------------------------------------------------- one contract module
_LITERAL = re.compile(r"(?<![\w.])quicktune\.[a-z_]+")
SCANNED = ["optuna_quicktune", "tools", "examples", "trl_objectives"]


def _docstrings(tree):
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def test_no_quicktune_key_literal_outside_contract():
    offenders = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "contract.py" and path.parent.name == "optuna_quicktune":
                continue
            tree = ast.parse(path.read_text())
            docs = _docstrings(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                    if _LITERAL.search(node.value):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
    assert not offenders, "Use the constants of optuna_quicktune.contract:\n" + "\n".join(offenders)


def test_contract_errors_name_study_trial_attribute_and_fix():
    e = ContractError("is bad.", study="s", trial=3, attribute=contract.COST, fix="Do this.")
    assert str(e) == f"Study 's', trial 3, attribute {contract.COST!r}: is bad. Do this."
    assert isinstance(e, QuickTuneError) and isinstance(e, ValueError)
    assert np.isfinite(contract.METAFEATURE_LIMIT)
