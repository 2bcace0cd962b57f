"""A corpus of malformed studies, trials, surrogate folders and storage URLs, and how each ends.

Each case builds a real input (an SQLite storage, a surrogate folder on disk), feeds it to the
public entry point a user would call, and classifies the outcome:

* ``clear error``: one of our errors (a ``QuickTuneError``) naming the problem, and no trial left
  RUNNING;
* ``skipped with reason``: ``MetaDataset.from_storage`` read the rest and logged why it left the
  bad study or trial out;
* ``handled``: the documented behaviour (a diverged run stopped at its step; a huge step ignored);
* ``traceback`` (anything else raised) or ``silent misread`` (accepted as if valid): failures.

Used by ``quicktune faults`` and tests/test_faults.py; the figures are in docs/reliability.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from optuna_quicktune import contract
from optuna_quicktune.errors import QuickTuneError

__all__ = ["run_corpus", "package_env", "objective_reporting"]

_GOOD_MF = {"lr_hint": -4.0, "rank_hint": 4.0, "n_examples": 1000.0, "irrelevant": 0.0}


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.text: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.text.append(record.getMessage())


def run_corpus(surrogate_dir: Path, work: Path) -> list[dict[str, str]]:
    """Try every malformed input; one record per case."""
    work.mkdir(parents=True, exist_ok=True)
    out: list[dict[str, str]] = []
    for name, build in _study_cases().items():
        out.append(_metadataset_case(f"study: {name}", build, work))
    for name, (attrs, steps) in _trial_cases().items():
        out.append(_trial_case(f"trial: {name}", attrs, steps, work))
    for name, attrs in _sampler_cases().items():
        out.append(_sampler_case(f"sampler study attrs: {name}", attrs, surrogate_dir, work))
    out.append(_sampler_case("sampler: multi-objective study", {}, surrogate_dir, work, directions=["maximize", "minimize"]))
    for name, value in (("-inf", -math.inf), ("NaN", math.nan), ("+inf", math.inf)):
        out.append(_diverged_case(f"pruner: report {name}", value, surrogate_dir, work))
    out.append(_huge_step_case(surrogate_dir, work))
    for name, mutate in _surrogate_cases().items():
        out.append(_surrogate_case(f"surrogate folder: {name}", mutate, surrogate_dir, work))
    out += _cli_cases(("sqlite:///missing-folder/x.db", "nonsense://x", "::::", "sqlite:///typo.db", "notdb"), work)
    return out


# ---------------------------------------------------------------------- studies and trials
def _base_study(storage: str, name: str, **override: Any) -> optuna.Study:
    from optuna_quicktune.simulate import SimulatedFamily

    family = SimulatedFamily(2, fidelity_max=3, seed=0)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    contract.describe_task(study, dataset=name, model="m", metric="score", fidelity_max=3,
                           metafeatures=_GOOD_MF, space=family.space)
    for key, value in override.items():
        study.set_user_attr(key, value)
    for i, cfg in enumerate(family.space.sample(3, seed=0)):
        study.add_trial(optuna.trial.create_trial(
            params=cfg, distributions=dict(family.space.distributions), value=0.5 + i / 10,
            intermediate_values={1: 0.2, 2: 0.4, 3: 0.5 + i / 10}, user_attrs={contract.COST: [1.0, 2.0, 3.0]}))
    return study


def _study_cases() -> dict[str, dict[str, Any]]:
    task = {"dataset": "d", "model": "m", "metric": "score", "direction": "maximize"}
    return {
        "direction 'sideways'": {contract.TASK: {**task, "direction": "sideways"}},
        "direction disagrees with the study": {contract.TASK: {**task, "direction": "minimize"}},
        "task is a list": {contract.TASK: [1, 2]},
        "fidelity max NaN": {contract.FIDELITY: {"unit": "epoch", "max": math.nan}},
        "fidelity max inf": {contract.FIDELITY: {"unit": "epoch", "max": math.inf}},
        "fidelity max 'abc'": {contract.FIDELITY: {"unit": "epoch", "max": "abc"}},
        "fidelity max 0": {contract.FIDELITY: {"unit": "epoch", "max": 0}},
        "fidelity max 2.5": {contract.FIDELITY: {"unit": "epoch", "max": 2.5}},
        "fidelity is a number": {contract.FIDELITY: 3},
        "meta-feature 'abc'": {contract.METAFEATURES: {**_GOOD_MF, "lr_hint": "abc"}},
        "meta-feature None": {contract.METAFEATURES: {**_GOOD_MF, "lr_hint": None}},
        "meta-feature 1e300": {contract.METAFEATURES: {**_GOOD_MF, "n_examples": 1e300}},
        "meta-features a list": {contract.METAFEATURES: [1.0, 2.0]},
    }


def _trial_cases() -> dict[str, tuple[dict[str, Any], dict[int, float]]]:
    curve = {1: 0.2, 2: 0.4, 3: 0.6}
    return {
        "resume_of 'abc'": ({contract.RESUME_OF: "abc"}, curve),
        "resume_of [1]": ({contract.RESUME_OF: [1]}, curve),
        "resume_of True": ({contract.RESUME_OF: True}, curve),
        "resume_of a later trial": ({contract.RESUME_OF: 99}, curve),
        "cost 'x'": ({contract.COST: "x"}, curve),
        "cost with inf": ({contract.COST: [1.0, math.inf, 3.0]}, curve),
        "cost of another length": ({contract.COST: [1.0]}, curve),
        "step beyond the fidelity max": ({}, {1: 0.2, 99: 0.9}),
        "step 0": ({}, {0: 0.1, 1: 0.2}),
        "NaN in the curve": ({}, {1: 0.2, 2: math.nan, 3: 0.6}),
        "config_id a number": ({contract.CONFIG_ID: 5}, curve),
    }


def _metadataset_case(case: str, attrs: dict[str, Any], work: Path) -> dict[str, str]:
    db = work / f"case-{abs(hash(case))}.db"
    db.unlink(missing_ok=True)
    storage = f"sqlite:///{db}"
    _base_study(storage, "good")
    _base_study(storage, "bad", **attrs)
    md, cap, failed = _read_logged(case, storage)
    if failed is not None:
        return failed
    names = [t.name for t in md.tasks]
    said = [m for m in cap.text if "'bad'" in m]
    if "bad" not in names and said:
        return _record(case, "skipped with reason", said[0])
    return _record(case, "silent misread", f"read tasks {names}")


def _read_logged(case: str, storage: str) -> tuple[Any, _Capture, dict[str, str] | None]:
    """``MetaDataset.from_storage`` with its log captured; the third item is set when it raised."""
    from optuna_quicktune.metadataset import MetaDataset

    cap = _Capture()
    logger = logging.getLogger("optuna_quicktune.metadataset")
    logger.addHandler(cap)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        return MetaDataset.from_storage(storage), cap, None
    except QuickTuneError as e:
        return None, cap, _record(case, "clear error", str(e))
    except Exception as e:  # noqa: BLE001 - the corpus classifies every outcome
        return None, cap, _record(case, "traceback", f"{type(e).__name__}: {e}")
    finally:
        logger.removeHandler(cap)
        logger.setLevel(old)


def _trial_case(case: str, attrs: dict[str, Any], steps: dict[int, float], work: Path) -> dict[str, str]:
    from optuna_quicktune.simulate import SimulatedFamily

    db = work / f"case-{abs(hash(case))}.db"
    db.unlink(missing_ok=True)
    storage = f"sqlite:///{db}"
    study = _base_study(storage, "good")
    space = SimulatedFamily(2, fidelity_max=3, seed=0).space
    cfg = space.sample(1, seed=42)[0]
    user_attrs = {contract.COST: [float(i + 1) for i in range(len(steps))], **attrs}
    study.add_trial(optuna.trial.create_trial(params=cfg, distributions=dict(space.distributions), value=0.9,
                                              intermediate_values=steps, user_attrs=user_attrs))
    bad = len(study.trials) - 1
    md, cap, failed = _read_logged(case, storage)
    if failed is not None:
        return failed
    used = {n for r in md.runs for n in r.trials}
    said = [m for m in cap.text if f"trial {bad}" in m]
    if bad not in used and said:
        return _record(case, "skipped with reason", said[0])
    if bad in used and not attrs and steps.get(99) is not None:
        return _record(case, "silent misread", "the run was read")
    run = next((r for r in md.runs if bad in r.trials), None)
    if run is not None and said:  # read, with the bad part left out and logged
        return _record(case, "skipped with reason", said[0])
    return _record(case, "silent misread", f"trial {bad} read as a run of length {None if run is None else run.length}")


# ---------------------------------------------------------------------- sampler and pruner
def _sampler(surrogate_dir: Path) -> Any:
    from optuna_quicktune import QuickTuneSampler, load_surrogate

    return QuickTuneSampler(load_surrogate(str(surrogate_dir)), n_candidates=50, seed=0)


def _sampler_cases() -> dict[str, dict[str, Any]]:
    return {
        "meta-feature 'abc'": {contract.METAFEATURES: {**_GOOD_MF, "lr_hint": "abc"}},
        "meta-feature None": {contract.METAFEATURES: {**_GOOD_MF, "lr_hint": None}},
        "meta-feature 1e300": {contract.METAFEATURES: {**_GOOD_MF, "n_examples": 1e300}},
        "meta-features a string": {contract.METAFEATURES: "abc"},
        "fidelity max 'abc'": {contract.METAFEATURES: _GOOD_MF, contract.FIDELITY: {"unit": "epoch", "max": "abc"}},
        "fidelity max 0": {contract.METAFEATURES: _GOOD_MF, contract.FIDELITY: {"unit": "epoch", "max": 0}},
        "fidelity max -3": {contract.METAFEATURES: _GOOD_MF, contract.FIDELITY: {"unit": "epoch", "max": -3}},
        "fidelity max 2.5": {contract.METAFEATURES: _GOOD_MF, contract.FIDELITY: {"unit": "epoch", "max": 2.5}},
        "fidelity max 10**6 (beyond the surrogate)": {contract.METAFEATURES: _GOOD_MF,
                                                      contract.FIDELITY: {"unit": "epoch", "max": 10**6}},
    }


def _sampler_case(case: str, attrs: dict[str, Any], surrogate_dir: Path, work: Path,
                  directions: list[str] | None = None) -> dict[str, str]:
    sampler = _sampler(surrogate_dir)
    study = optuna.create_study(sampler=sampler,
                                directions=directions or ["maximize"])
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    try:
        study.ask()
        outcome, detail = "silent misread", "a trial was started"
    except QuickTuneError as e:
        outcome, detail = "clear error", str(e)
    except Exception as e:  # noqa: BLE001
        outcome, detail = "traceback", f"{type(e).__name__}: {e}"
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if running and outcome == "clear error":
        outcome, detail = "left RUNNING", f"{len(running)} RUNNING trial(s) after: {detail}"
    elif outcome == "clear error":
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if failed and not failed[-1].user_attrs.get(contract.FAIL_REASON):
            outcome, detail = "silent misread", "a FAIL trial without a reason"
    return _record(case, outcome, detail)


def objective_reporting(values: dict[int, float]) -> Callable[[optuna.Trial], float]:
    """An objective that reports ``{step: value}`` as given (NaN, inf, huge steps) and obeys the pruner."""
    from optuna_quicktune.space import lora_space

    space = lora_space()

    def objective(trial: optuna.Trial) -> float:
        space.suggest(trial)
        for step, v in values.items():
            trial.report(v, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return 0.5

    return objective


def _diverged_case(case: str, value: float, surrogate_dir: Path, work: Path) -> dict[str, str]:
    from optuna_quicktune import QuickTunePruner

    sampler = _sampler(surrogate_dir)
    # min_steps=3: the cost-benefit rule cannot stop it before step 3, so only divergence does.
    study = optuna.create_study(sampler=sampler, pruner=QuickTunePruner(sampler, min_steps=3), direction="maximize")
    study.set_user_attr(contract.METAFEATURES, _GOOD_MF)
    study.optimize(objective_reporting({1: 0.3, 2: value, 3: 0.4, 4: 0.5}), n_trials=1)
    t = study.trials[-1]
    if t.state == TrialState.PRUNED and t.last_step == 2:
        return _record(case, "handled", "pruned at step 2, the step it appeared")
    return _record(case, "silent misread", f"{t.state.name} after step {t.last_step}")


def _huge_step_case(surrogate_dir: Path, work: Path) -> dict[str, str]:
    import time

    from optuna_quicktune import QuickTunePruner

    case = "pruner: report step 10**9"
    sampler = _sampler(surrogate_dir)
    study = optuna.create_study(sampler=sampler,
                                pruner=QuickTunePruner(sampler), direction="maximize")
    study.set_user_attr(contract.METAFEATURES, _GOOD_MF)
    t0 = time.perf_counter()
    try:
        study.optimize(objective_reporting({1: 0.3, 10**9: 0.4}), n_trials=2)
    except Exception as e:  # noqa: BLE001
        return _record(case, "traceback", f"{type(e).__name__}: {e}")
    seconds = time.perf_counter() - t0
    states = [t.state.name for t in study.trials]
    if all(s in ("COMPLETE", "PRUNED") for s in states):
        return _record(case, "handled", f"ignored beyond the fidelity max; 2 trials {states} in {seconds:.1f} s")
    return _record(case, "silent misread", f"states {states}")


# ---------------------------------------------------------------------- surrogate folders and URLs
def _surrogate_cases() -> dict[str, Callable[[Path], None]]:
    from optuna_quicktune.surrogate.persistence import CONFIG_FILE, WEIGHTS_FILE

    def cfg(update: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
        def mutate(d: Path) -> None:
            data = json.loads((d / CONFIG_FILE).read_text())
            result = update(data)
            (d / CONFIG_FILE).write_text(json.dumps(data if result is None else result))
        return mutate

    return {
        "surrogate.json is a JSON list": cfg(lambda c: [1, 2]),
        "surrogate.json is null": lambda d: (d / CONFIG_FILE).write_text("null"),
        "format_version -5": cfg(lambda c: c.update(format_version=-5)),
        "format_version true": cfg(lambda c: c.update(format_version=True)),
        "format_version 999": cfg(lambda c: c.update(format_version=999)),
        "surrogate.json not JSON": lambda d: (d / CONFIG_FILE).write_text("{not json"),
        "weights are garbage": lambda d: (d / WEIGHTS_FILE).write_bytes(b"\x00garbage" * 10),
        "weights missing": lambda d: (d / WEIGHTS_FILE).unlink(),
        "space missing": cfg(lambda c: c.pop("space") and None),
    }


def _surrogate_case(case: str, mutate: Callable[[Path], None], surrogate_dir: Path, work: Path) -> dict[str, str]:
    from optuna_quicktune import load_surrogate

    d = work / "bad-surrogate"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(surrogate_dir, d)
    mutate(d)
    try:
        load_surrogate(str(d))
    except QuickTuneError as e:
        return _record(case, "clear error", str(e))
    except Exception as e:  # noqa: BLE001
        return _record(case, "traceback", f"{type(e).__name__}: {e}")
    return _record(case, "silent misread", "loaded")


def _cli_cases(urls: tuple[str, ...], work: Path) -> list[dict[str, str]]:
    """``quicktune meta-train --storage URL`` for each URL, all at once (each a fresh interpreter,
    so most of the time is imports), each in its own folder so that a file it wrongly creates is its own."""
    runs = []
    for i, url in enumerate(urls):
        cwd = work / f"cli-{i}"
        cwd.mkdir(parents=True, exist_ok=True)
        runs.append((url, cwd, subprocess.Popen(
            [sys.executable, "-m", "optuna_quicktune.cli", "meta-train", "--storage", url, "--out", str(cwd / "never")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=package_env())))
    out = []
    for url, cwd, proc in runs:
        case = f"CLI meta-train --storage {url}"
        try:
            _, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            out.append(_record(case, "traceback", "no answer within 300 s"))
            continue
        err = err.strip()
        created = sorted(p.name for p in cwd.iterdir())
        if "Traceback" in err:
            out.append(_record(case, "traceback", err.splitlines()[-1]))
        elif proc.returncode != 0 and len(err.splitlines()) == 1 and not created:
            out.append(_record(case, "clear error", err))
        else:
            out.append(_record(case, "silent misread", f"exit {proc.returncode}; created {created}; {err[:200]}"))
    return out


def package_env() -> dict[str, str]:
    """The environment for a subprocess that must import this copy of the package (not another install)."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else ""), "PYTHONWARNINGS": "ignore"}


def _record(case: str, outcome: str, detail: str) -> dict[str, str]:
    return {"case": case, "outcome": outcome, "detail": " ".join(detail.split())}
