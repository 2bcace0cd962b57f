"""The QuickTune dashboard views, checked on their content (no browser; see test_dashboard_browser.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest

pytest.importorskip("optuna_dashboard", reason="needs the [dashboard] extra: pip install 'optuna-quicktune[dashboard]'")
pytest.importorskip("plotly", reason="needs the [dashboard] extra: pip install 'optuna-quicktune[dashboard]'")

from optuna_quicktune import QuickTunePruner, QuickTuneSampler, contract  # noqa: E402
from optuna_quicktune.dashboard import (  # noqa: E402
    FIGURE_LEARNING_CURVES,
    FIGURE_PREDICTED_VS_OBSERVED,
    NOTE_BEGIN,
    NOTE_END,
    QuickTuneDashboard,
    portfolio_rows,
)
from optuna_quicktune.simulate import SimulatedObjective  # noqa: E402

TASK = 5  # held out of the session surrogate's meta-training (tests/conftest.py)


def build_study(family: Any, surrogate: Any, storage: str, *, n_trials: int = 8) -> tuple[optuna.Study, QuickTuneSampler]:
    """A small QuickTune study with the dashboard callback, plus one trial left running.

    The running trial (asked, two steps reported, never told) is what a second worker's live run
    looks like in the storage; the learning-curve figure must extrapolate it.
    """
    task = family.tasks[TASK]
    sampler = QuickTuneSampler(surrogate, metafeatures=task.metafeatures, n_candidates=100, seed=0)
    study = optuna.create_study(storage=storage, study_name="quicktune-dashboard", direction="maximize",
                                sampler=sampler, pruner=QuickTunePruner(sampler))
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    optuna_dashboard.save_note(study, "My own notes about this study.")
    study.optimize(SimulatedObjective(task), n_trials=n_trials, callbacks=[QuickTuneDashboard(sampler, top_k=5)])
    running = study.ask()
    config = family.space.suggest(running)
    for step, value in enumerate(task.curve(config)[:2], 1):
        running.report(float(value), step)
    contract.record_cost(running, [1.0, 2.0])
    QuickTuneDashboard(sampler, top_k=5).publish(study)
    return study, sampler


@pytest.fixture(scope="module")
def dash_study(family, surrogate, tmp_path_factory) -> tuple[optuna.Study, QuickTuneSampler]:
    db = tmp_path_factory.mktemp("dash") / "study.db"
    return build_study(family, surrogate, f"sqlite:///{db}")


def _figures(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """Read the published figures back the way optuna-dashboard's server does."""
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    system_attrs = study._storage.get_study_system_attrs(study._study_id)  # noqa: SLF001
    return {gid: json.loads(body) for gid, body in get_plotly_graph_objects(system_attrs).items()}


def test_predicted_vs_observed_has_every_predicted_trial(dash_study):
    study, _ = dash_study
    fig = _figures(study)[FIGURE_PREDICTED_VS_OBSERVED]
    assert "predicted vs observed" in fig["layout"]["title"]["text"]
    points = [t for t in fig["data"] if t.get("mode") == "markers"]
    n_points = sum(len(t["x"]) for t in points)
    with_pred = [t for t in study.trials if contract.PREDICTED in t.user_attrs and (t.value is not None or t.intermediate_values)]
    assert n_points == len(with_pred) >= 8
    completed = next(t for t in points if t["name"].startswith("completed"))
    by_number = {t.number: t for t in study.trials}
    for x, y, text in zip(completed["x"], completed["y"], completed["text"]):
        number = int(text.split()[1])
        trial = by_number[number]
        assert x == pytest.approx(trial.user_attrs[contract.PREDICTED]["mean"])
        assert y == pytest.approx(trial.value)
    assert any(t.get("name") == "observed = predicted" for t in fig["data"])


def test_learning_curves_extrapolate_running_and_paused_trials(dash_study):
    study, sampler = dash_study
    fig = _figures(study)[FIGURE_LEARNING_CURVES]
    names = [t.get("name", "") for t in fig["data"]]
    running = [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert running and f"trial {running[0]} (running)" in names
    assert f"trial {running[0]} predicted" in names
    pred = next(t for t in fig["data"] if t.get("name") == f"trial {running[0]} predicted")
    fmax = study.user_attrs[contract.FIDELITY]["max"]
    assert pred["x"][0] == 2 and pred["x"][-1] == fmax  # from the last observed step to the end
    paused = [t.number for t in study.trials if t.user_attrs.get(contract.PAUSED)
              and not any(u.user_attrs.get(contract.RESUME_OF) == t.number for u in study.trials)]
    for n in paused:
        assert f"trial {n} predicted" in names


def test_note_keeps_user_text_and_lists_the_portfolio(dash_study):
    from optuna_dashboard import get_note

    study, sampler = dash_study
    note = get_note(study)
    assert note.startswith("My own notes about this study.")
    assert note.count(NOTE_BEGIN) == 1 and note.count(NOTE_END) == 1  # republished, replaced, not appended
    assert "## QuickTune portfolio" in note and "Calibration so far" in note
    rows = portfolio_rows(sampler, study, 5)
    assert len(rows["next"]) == 5 and len(rows["final"]) == 5
    assert all(r["cost"] > 0 for r in rows["next"] + rows["final"])
    finals = [r["mean"] for r in rows["final"]]
    assert finals == sorted(finals, reverse=True)
    assert f"| 1 | {rows['next'][0]['kind']} | {rows['next'][0]['mean']:.4g} |" in note
    used = {t.user_attrs.get(contract.CONFIG_ID) for t in study.trials}
    assert not {r["config_id"] for r in rows["final"] if r["kind"] == "new"} & used


def test_callback_validates_its_arguments(surrogate):
    with pytest.raises(TypeError, match="QuickTuneSampler"):
        QuickTuneDashboard(object())  # type: ignore[arg-type]
    sampler = QuickTuneSampler(surrogate, metafeatures={"lr_hint": -4.0, "rank_hint": 4.0, "n_examples": 1000.0, "irrelevant": 0.0})
    with pytest.raises(ValueError, match="every"):
        QuickTuneDashboard(sampler, every=0)


def test_package_import_does_not_pull_plotly_and_names_the_extra_when_missing():
    import subprocess
    import sys

    code = (
        "import sys, optuna, optuna_quicktune\n"
        "optuna_quicktune.QuickTuneDashboard\n"
        "print('plotly' in sys.modules)\n"
        "sys.modules['plotly'] = None  # as if the [dashboard] extra were not installed\n"
        "from optuna_quicktune.dashboard import predicted_vs_observed_figure\n"
        "try:\n"
        "    predicted_vs_observed_figure(optuna.create_study())\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    first, message = out.stdout.strip().split("\n", 1)
    assert first == "False"
    assert "pip install 'optuna-quicktune[dashboard]'" in message


def test_figures_of_a_study_without_quicktune_trials():
    """A plain study (no predictions yet) still gets a valid, empty figure rather than an error."""
    from optuna_quicktune.dashboard import predicted_vs_observed_figure

    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    fig = predicted_vs_observed_figure(study)
    assert len(fig.data) == 0 and "predicted vs observed" in fig.layout.title.text


def test_cli_has_the_dashboard_command():
    from optuna_quicktune.cli import build_parser

    args = build_parser().parse_args(["dashboard", "sqlite:///runs.db", "--port", "8123"])
    assert (args.command, args.storage, args.port, args.host) == ("dashboard", "sqlite:///runs.db", 8123, "127.0.0.1")
