"""``quicktune demo`` in a reduced form: the shipped surrogate, a held-out task, a tiny model, real trials."""

from __future__ import annotations

import optuna
import pytest

from optuna_quicktune.pretrained import available, load_surrogate
from optuna_quicktune.space import DEFAULT_LORA_CONFIG
from trl_objectives.demo import DEMO_SURROGATE, DEMO_TASK, run_demo
from trl_objectives.models import build_tiny_phi3
from trl_objectives.tasks import load_task


def test_shipped_surrogate_loads_by_name_and_fits_the_lora_space():
    from optuna_quicktune.space import lora_space
    from trl_objectives import METAFEATURE_NAMES

    assert DEMO_SURROGATE in available()
    s = load_surrogate(DEMO_SURROGATE)
    assert s.space.fingerprint == lora_space().fingerprint
    assert sorted(s.metafeature_names) == sorted(METAFEATURE_NAMES)
    assert s.info["collect"]["metric"] in ("eval_loss", "token_f1", "exact_match")
    # the demo's task is held out of the surrogate's meta-dataset
    assert not any(t.startswith(DEMO_TASK + "/") for t in s.info["tasks"])


@pytest.mark.slow
def test_demo_runs_quicktune_against_the_baselines(tmp_path):
    qa = load_task(DEMO_TASK, 2)
    texts = [x for split in (qa.train, qa.validation, qa.test) for c in ("question", "answer") for x in split[c]]
    model = tmp_path / "tiny-phi3"
    build_tiny_phi3(texts + ["Answer with the exact value only."], save_to=str(model), seed=0)
    lines: list[str] = []
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    result = run_demo(model=str(model), storage=url, n_trials=2, facts=2, checkpoint_dir=str(tmp_path / "ck"),
                      num_threads=1,  # a 2-layer model: one thread is fastest
                      progress=False, echo=lines.append)
    out = "\n".join(lines)
    assert result["task"] == DEMO_TASK and result["default"]["validation"] is not None
    assert result["zero_shot"]["validation"] is not None and result["zero_shot"]["test"] is not None
    assert "un-finetuned (zero-shot)" in out and "default LoRA configuration" in out
    assert f"optuna-dashboard {url}" in out
    if result["quicktune"] is not None:  # a completed QuickTune trial: its config and test score are shown
        assert "Best configuration:" in out and result["quicktune"]["test"] is not None
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert {n.rsplit("/", 1)[1] for n in names} == {"zero-shot", "default", "random", "quicktune"}
    assert "random configuration (seed 0)" in out and result["random"]["params"] != DEFAULT_LORA_CONFIG
    qt = optuna.load_study(study_name=result["quicktune_study"], storage=url)
    assert len(qt.trials) == 2
    # The QuickTune views are in the storage, so the printed optuna-dashboard command shows them.
    from optuna_dashboard import get_note

    from optuna_quicktune.dashboard import NOTE_BEGIN

    assert set(result["dashboard_views"]) == {"predicted_vs_observed", "learning_curves"}
    assert NOTE_BEGIN in get_note(qt)
    assert "predicted-vs-observed" in out


def test_demo_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="Registered tasks"):
        run_demo("nope", storage=f"sqlite:///{tmp_path / 'x.db'}", progress=False, echo=lambda s: None)
    with pytest.raises(ValueError, match="n_trials"):
        run_demo(n_trials=0, storage=f"sqlite:///{tmp_path / 'x.db'}", progress=False, echo=lambda s: None)
