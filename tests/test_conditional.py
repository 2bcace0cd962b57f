"""Conditional (define-by-run) search spaces end to end, declared-distribution fallbacks, and
opt-in imputation of missing meta-features.

The round trip is real: a conditional simulated family goes to a SQLite storage, comes back as a
MetaDataset, meta-trains a surrogate, and QuickTuneSampler + QuickTunePruner drive a hand-written
define-by-run objective on a held-out task.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from optuna_quicktune import QuickTunePruner, QuickTuneSampler, contract
from optuna_quicktune.errors import MetaFeatureError
from optuna_quicktune.metadataset import MetaDataset
from optuna_quicktune.simulate import SimulatedFamily, SimulatedObjective
from optuna_quicktune.space import SearchSpace, lora_conditional_space, lora_space

PARAMS_KEY = "quicktune.params"  # the sampler's proposal, a trial system attribute
N_TASKS, HELD_OUT, FIDELITY = 6, 5, 6


def _space() -> SearchSpace:
    return SearchSpace(
        {
            "booster": CategoricalDistribution(["gbtree", "gblinear", "dart"]),
            "eta": FloatDistribution(1e-3, 1.0, log=True),
            "max_depth": IntDistribution(1, 10),
            "rate_drop": FloatDistribution(0.0, 0.5),
            "lambda": FloatDistribution(0.0, 1.0),
        },
        name="xgb",
        conditions={"max_depth": ("booster", ["gbtree", "dart"]), "rate_drop": ("booster", "dart")},
    )


# ---------------------------------------------------------------------- SearchSpace
def test_inactive_parameters_are_encoded_apart_from_their_lower_bound():
    sp = _space()
    assert sp.dim == 3 + 1 + (1 + 1) + (1 + 1) + 1  # one active indicator per conditional parameter
    linear = sp.encode({"booster": "gblinear", "eta": 0.1, "lambda": 0.2})
    shallow = sp.encode({"booster": "gbtree", "eta": 0.1, "max_depth": 1, "lambda": 0.2})
    md_col, md_ind = sp._slices["max_depth"].start, sp._indicator["max_depth"]
    assert (linear[md_col], linear[md_ind]) == (0.5, 0.0)  # neutral value, inactive
    assert (shallow[md_col], shallow[md_ind]) == (0.0, 1.0)  # lower bound, active
    # Values of inactive parameters change nothing: not the encoding, not the id.
    noisy = {"booster": "gblinear", "eta": 0.1, "lambda": 0.2, "max_depth": 7, "rate_drop": 0.3}
    assert np.array_equal(sp.encode(noisy), linear)
    assert sp.config_id(noisy) == sp.config_id({"booster": "gblinear", "eta": 0.1, "lambda": 0.2})
    assert sp.project(noisy) == {"booster": "gblinear", "eta": 0.1, "lambda": 0.2}
    with pytest.raises(ValueError, match="lacks parameters \\['rate_drop'\\]"):
        sp.validate({"booster": "dart", "eta": 0.1, "max_depth": 3, "lambda": 0.2})
    # Samples and decoded vectors hold exactly their active parameters.
    configs = sp.sample(200, seed=0)
    assert all(set(c) == set(sp.active(c)) for c in configs)
    assert {c["booster"] for c in configs} == {"gbtree", "gblinear", "dart"}
    assert [sp.decode(x) for x in sp.encode_many(configs)] == [
        {k: (pytest.approx(v) if isinstance(v, float) else v) for k, v in c.items()} for c in configs
    ]


def test_conditions_are_part_of_identity_and_json():
    sp = _space()
    flat = SearchSpace(dict(sp.distributions), name="xgb")
    assert sp.fingerprint != flat.fingerprint and sp.is_conditional and not flat.is_conditional
    back = SearchSpace.from_json(sp.to_json())
    assert back == sp and back.conditions == sp.conditions and back.names == sp.names
    # the order of a condition's values does not matter; an unconditional space hashes as it always did
    same = SearchSpace(dict(sp.distributions), name="xgb",
                       conditions={"max_depth": ("booster", ["dart", "gbtree"]), "rate_drop": ("booster", ["dart"])})
    assert same.fingerprint == sp.fingerprint
    assert lora_space().fingerprint == "18e51e915b1e4ee8"  # as before conditions existed: stored surrogates stay valid
    assert "conditions" not in lora_space().to_json() and lora_conditional_space().is_conditional
    with pytest.raises(ValueError, match="comes after it"):
        SearchSpace({"a": FloatDistribution(0, 1), "b": CategoricalDistribution(["x", "y"])}, conditions={"a": ("b", "x")})
    with pytest.raises(ValueError, match="'z' is not a value of 'b'"):
        SearchSpace({"b": CategoricalDistribution(["x", "y"]), "a": FloatDistribution(0, 1)}, conditions={"a": ("b", "z")})
    with pytest.raises(ValueError, match="must keep their parents"):
        sp.subset(["eta", "max_depth"])


def test_suggest_asks_only_for_active_parameters_and_conditions_can_be_inferred():
    sp = _space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        trial = study.ask()
        config = sp.suggest(trial)
        assert set(trial.params) == set(config) == set(sp.active(config))
        study.tell(trial, 0.0)
    seen = [t.params for t in study.trials]
    union = {}
    for t in study.trials:
        union.update(t.distributions)
    inferred = SearchSpace.infer(seen, {k: union[k] for k in sp.names if k in union}, name="xgb")
    assert inferred is not None and all(set(inferred.active(c)) == set(c) for c in seen)


def test_metadataset_reads_conditional_trials_and_tables(tmp_path):
    fam = SimulatedFamily(2, fidelity_max=3, seed=0, space=lora_conditional_space())
    md = fam.metadataset(12, seed=0)
    assert any("adam_beta1" in r.config for r in md.runs) and any("adam_beta1" not in r.config for r in md.runs)
    url = f"sqlite:///{tmp_path / 'cond.db'}"
    md.to_storage(url)
    back = MetaDataset.from_storage(url)
    assert back.space == md.space and back.space.is_conditional and len(back.runs) == len(md.runs)
    assert sorted(map(str, (r.config for r in back.runs))) == sorted(map(str, (r.config for r in md.runs)))
    # A study written without describe_task(space=...) has its conditions inferred from the trials.
    study = optuna.create_study(storage=url, study_name="bare")
    contract.describe_task(study, dataset="d", model="m", metric="score", fidelity_max=3,
                           metafeatures=dict(fam.tasks[0].metafeatures))
    for r in md.runs_of(0):
        study.add_trial(optuna.trial.create_trial(
            params=r.config, distributions=md.space.active_distributions(r.config), value=float(r.curve[-1]),
            intermediate_values={s + 1: float(v) for s, v in enumerate(r.curve)}))
    bare = MetaDataset.from_storage(url, ["bare"])
    assert bare.space.is_conditional and len(bare.runs) == len(md.runs_of(0))
    assert bare.space.conditions["adam_beta2"].values == ("adamw_torch",)
    for writer, reader in ((md.to_csv, MetaDataset.from_csv), (md.to_parquet, MetaDataset.from_parquet)):
        path = writer(tmp_path / f"t.{writer.__name__[3:]}")
        table = reader(path)
        assert table.space == md.space
        assert [r.config for r in table.runs] == [
            {k: (pytest.approx(v) if isinstance(v, float) else v) for k, v in r.config.items()} for r in md.runs
        ]


# ---------------------------------------------------------------------- the round trip
@pytest.fixture(scope="module")
def cond_family():
    return SimulatedFamily(N_TASKS, fidelity_max=FIDELITY, seed=2, space=lora_conditional_space())


@pytest.fixture(scope="module")
def cond_surrogate(cond_family, tmp_path_factory):
    from optuna_quicktune.surrogate import meta_train

    md = cond_family.metadataset(40, seed=1, tasks=[i for i in range(N_TASKS) if i != HELD_OUT])
    # A journal file: a real, persistent storage (SQLite writes the 200 trials ~10x slower; the
    # SQLite round trip is test_metadataset_reads_conditional_trials_and_tables).
    journal = tmp_path_factory.mktemp("cond") / "meta.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    md.to_storage(storage)
    stored = MetaDataset.from_storage(storage)  # what a user with these studies would meta-train on
    assert stored.space == cond_family.space and len(stored.runs) == len(md.runs)
    return meta_train(stored, steps=150, seed=0)


def _define_by_run(task, log):
    """An objective written the Optuna way: AdamW's betas are asked for only when AdamW is chosen."""

    def objective(trial: optuna.Trial) -> float:
        contract.describe_task(trial.study, dataset=task.name, model="simulated", metric="score",
                               fidelity_max=task.fidelity_max, metafeatures=task.metafeatures)
        config = lora_space().suggest(trial)
        config["optim"] = trial.suggest_categorical("optim", ["adamw_torch", "adafactor", "sgd"])
        if config["optim"] == "adamw_torch":
            config["adam_beta1"] = trial.suggest_float("adam_beta1", 0.8, 0.95)
            config["adam_beta2"] = trial.suggest_float("adam_beta2", 0.95, 0.999)
        log.append(dict(config))
        curve, cost = task.curve(config), np.cumsum(task.step_costs(config))
        for step in range(1, task.fidelity_max + 1):
            trial.report(float(curve[step - 1]), step)
            contract.record_cost(trial, [float(c) for c in cost[:step]])
            if step < task.fidelity_max and trial.should_prune():
                raise optuna.TrialPruned()
        return float(curve[-1])

    return objective


def test_round_trip_conditional_family_with_sampler_and_pruner(cond_family, cond_surrogate, caplog, tmp_path):
    task = cond_family.tasks[HELD_OUT]
    space = cond_family.space
    sampler = QuickTuneSampler(cond_surrogate, metafeatures=task.metafeatures, seed=0, n_candidates=300)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=QuickTunePruner(sampler),
                                storage=url, study_name="held-out")
    log: list[dict] = []
    optuna.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            study.optimize(_define_by_run(task, log), n_trials=14)
    finally:
        optuna.logging.disable_propagation()
    assert "sampled independently" not in caplog.text  # no parameter fell back to random
    trials = study.trials
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert any(t.state == TrialState.PRUNED for t in trials)  # the pruner took part
    for t, config in zip(trials, log):
        proposed = t.system_attrs[PARAMS_KEY]
        assert set(proposed) == set(space.active(proposed))  # the sampler proposes consistent configurations
        assert t.params == proposed == config  # its values, exactly, reached the objective
        assert t.user_attrs[contract.CONFIG_ID] == space.config_id(config)
    # Both branches of the condition were proposed (the held-out task's best is AdamW or not).
    ranked = sampler.rank_actions(study)
    assert {("adam_beta1" in a.config) for a in ranked} == {True, False}
    assert all(set(a.config) == set(space.active(a.config)) for a in ranked)
    # The study itself is a meta-dataset task of the conditional space.
    contract.describe_task(study, dataset=task.name, model="simulated", metric="score", fidelity_max=FIDELITY,
                           metafeatures=task.metafeatures, space=space, overwrite=True)
    md = MetaDataset.from_storage(url, ["held-out"])
    assert md.space == space and len(md.runs) == len(trials)


# ---------------------------------------------------------------------- declared distributions
def test_parameter_declared_with_another_distribution_falls_back_once(cond_family, cond_surrogate, caplog):
    task = cond_family.tasks[HELD_OUT]
    sampler = QuickTuneSampler(cond_surrogate, metafeatures=task.metafeatures, seed=1, n_candidates=200)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    ours = cond_surrogate.space.distributions

    def objective(trial: optuna.Trial) -> float:
        rank = trial.suggest_categorical("lora_r", [8, 16, 32])  # the surrogate has an int, log scale
        lr = trial.suggest_float("learning_rate", 1e-5, 1e-3)  # the surrogate's is log=True
        dropout = trial.suggest_float("lora_dropout", 0.0, 0.2)  # same as the surrogate's
        return float(task.final_score({"learning_rate": lr, "lora_r": rank, "lora_dropout": dropout}))

    optuna.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            study.optimize(objective, n_trials=5)
    finally:
        optuna.logging.disable_propagation()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5  # nothing failed, nothing RUNNING
    assert caplog.text.count("'lora_r' is declared as") == 1
    assert caplog.text.count("'learning_rate' is declared as") == 1
    assert "'lora_dropout'" not in caplog.text
    for t in study.trials:  # the parameter declared as the surrogate's still gets the proposed value
        assert t.params["lora_dropout"] == t.system_attrs[PARAMS_KEY]["lora_dropout"]
        assert t.params["lora_r"] in (8, 16, 32)
    relative = sampler.infer_relative_search_space(study, study.trials[-1])
    assert relative == {"lora_dropout": ours["lora_dropout"]}


# ---------------------------------------------------------------------- missing meta-features
def test_missing_metafeatures_are_refused_unless_imputation_is_asked(cond_family, cond_surrogate, caplog, tmp_path):
    from optuna_quicktune.surrogate import load as load_surrogate

    task = cond_family.tasks[HELD_OUT]
    partial = {k: v for k, v in task.metafeatures.items() if k != "n_examples"}
    partial["irrelevant"] = math.nan  # an OpenML quality can be missing as NaN
    with pytest.raises(MetaFeatureError, match="'irrelevant' = nan"):  # a NaN value is named
        QuickTuneSampler(cond_surrogate, metafeatures=partial)
    with pytest.raises(MetaFeatureError, match="missing \\['n_examples'\\]"):
        QuickTuneSampler(cond_surrogate, metafeatures={k: v for k, v in task.metafeatures.items() if k != "n_examples"})

    # The training means are stored with the surrogate (and come back from disk).
    train = [t for i, t in enumerate(cond_family.tasks) if i != HELD_OUT]
    names = cond_surrogate.prep.metafeature_names
    expected = {n: float(np.mean([t.metafeatures[n] for t in train])) for n in names}
    cond_surrogate.save(str(tmp_path / "s"))
    loaded = load_surrogate(str(tmp_path / "s"))
    assert dict(zip(names, loaded.prep.mf_train_mean)) == pytest.approx(expected)

    sampler = QuickTuneSampler(loaded, metafeatures=partial, impute="train_mean", seed=0, n_candidates=100)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    with caplog.at_level(logging.WARNING, logger="optuna_quicktune"):
        study.optimize(lambda t: SimulatedObjective(task, cond_family.space)(t), n_trials=3)
    assert caplog.text.count("Imputed meta-features ['irrelevant', 'n_examples']") == 1
    for t in study.trials:
        assert t.user_attrs[contract.PREDICTED]["imputed_metafeatures"] == ["irrelevant", "n_examples"]
    # Meta-features read from the study's attribute are imputed the same way.
    other = optuna.create_study(direction="maximize", sampler=QuickTuneSampler(loaded, impute="train_mean", seed=0, n_candidates=100))
    other.set_user_attr(contract.METAFEATURES, {k: v for k, v in task.metafeatures.items() if k != "rank_hint"})
    assert other.ask().user_attrs[contract.PREDICTED]["imputed_metafeatures"] == ["rank_hint"]
    complete = optuna.create_study(direction="maximize", sampler=QuickTuneSampler(loaded, impute="train_mean", seed=0, n_candidates=100))
    complete.set_user_attr(contract.METAFEATURES, dict(task.metafeatures))
    assert "imputed_metafeatures" not in complete.ask().user_attrs[contract.PREDICTED]
    with pytest.raises(MetaFeatureError, match="No meta-features"):  # and without impute, still refused
        optuna.create_study(sampler=QuickTuneSampler(loaded, seed=0)).ask()

    from optuna_quicktune.pretrained import load_surrogate as load_packaged

    old = load_packaged("smollm2-135m-factqa")  # shipped before the means were stored
    assert old.prep.mf_train_mean is None
    some = {n: 1.0 for n in old.prep.metafeature_names[:-1]}
    with pytest.raises(MetaFeatureError, match="saved without them.*Retrain"):
        QuickTuneSampler(old, metafeatures=some, impute="train_mean")
    everything = {**some, old.prep.metafeature_names[-1]: 1.0}
    QuickTuneSampler(old, metafeatures=everything, impute="train_mean")  # nothing to impute: fine
    with pytest.raises(ValueError, match="impute must be one of"):
        QuickTuneSampler(loaded, metafeatures=task.metafeatures, impute="mean")


# ---------------------------------------------------------------------- the conditional LoRA space
def test_sft_objective_trains_the_conditional_lora_space(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    from transformers import TrainerCallback

    from optuna_quicktune.space import DEFAULT_LORA_CONFIG
    from trl_objectives import SFTObjective, build_tiny_phi3, load_qa_dataset, toy_qa_records

    class Optimizers(TrainerCallback):
        def __init__(self) -> None:
            self.seen: list[str] = []

        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
            self.seen.append(type(inner).__name__)

    qa = load_qa_dataset(toy_qa_records(4), name="toy-facts")
    texts = [q for split in (qa.train, qa.validation, qa.test) for q in split["question"]]
    texts += list(qa.train["answer"]) + list(qa.validation["answer"]) + list(qa.test["answer"])
    build_tiny_phi3(texts, save_to=tmp_path / "tiny", seed=0)
    space = lora_conditional_space()
    callback = Optimizers()
    obj = SFTObjective(tmp_path / "tiny", qa, space=space, max_epochs=1, metric="eval_loss", evaluate_test=False,
                       checkpoint_dir=tmp_path / "ck", callbacks=[callback], num_threads=1)
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    study = optuna.create_study(direction=obj.direction, storage=url, study_name="cond-lora",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    base = {**DEFAULT_LORA_CONFIG, "learning_rate": 1e-3, "per_device_train_batch_size": 16}
    study.enqueue_trial({**base, "optim": "adafactor"})
    study.enqueue_trial({**base, "optim": "adamw_torch", "adam_beta1": 0.85, "adam_beta2": 0.99})
    before = torch.get_num_threads()
    study.optimize(obj, n_trials=2)
    assert torch.get_num_threads() == before
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert callback.seen == ["Adafactor", "AdamW"]
    _, sft = obj.training_settings(study.trials[1].params)
    assert (sft["optim"], sft["adam_beta1"], sft["adam_beta2"]) == ("adamw_torch", 0.85, 0.99)
    assert study.user_attrs[contract.SPACE]["conditions"]["adam_beta2"] == {"parent": "optim", "values": ["adamw_torch"]}
    md = MetaDataset.from_storage(url)
    assert md.space == space and len(md.runs) == 2
    configs = {r.config["optim"]: r.config for r in md.runs}
    assert "adam_beta1" not in configs["adafactor"]  # inactive for Adafactor, whatever the objective suggested
    assert configs["adamw_torch"]["adam_beta2"] == 0.99


def test_portfolio_and_dashboard_show_active_parameters_only(cond_family, cond_surrogate):
    pytest.importorskip("plotly")
    from optuna_quicktune.dashboard import portfolio_note, portfolio_rows

    task = cond_family.tasks[HELD_OUT]
    space = cond_family.space
    sampler = QuickTuneSampler(cond_surrogate, metafeatures=task.metafeatures, seed=2, n_candidates=200)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    enqueued = sampler.enqueue_portfolio(study, k=6)
    assert all(set(c) == set(space.active(c)) for c in enqueued)
    log: list[dict] = []
    study.optimize(_define_by_run(task, log), n_trials=6)  # the define-by-run objective runs them as they are
    assert [t.params for t in study.trials] == enqueued == log
    rows = portfolio_rows(sampler, study, 20)
    shown = rows["next"] + rows["final"]  # the note's two tables, in this order
    assert all(set(r["config"]) == set(space.active(r["config"])) for r in shown)
    assert any("adam_beta1" not in r["config"] for r in shown)  # rows whose AdamW settings are switched off
    note = portfolio_note(sampler, study, 20)
    lines = note.splitlines()
    header = next(ln for ln in lines if ln.startswith("| # | action"))
    cols = [c.strip() for c in header.strip().strip("|").split("|")]
    table = [ln for ln in lines if ln.startswith("| ") and ln.split("|")[1].strip().isdigit()]
    assert len(table) == len(shown)
    for r, ln in zip(shown, table):  # a parameter's cell is blank exactly where it is inactive
        cells = dict(zip(cols, (c.strip() for c in ln.strip().strip("|").split("|"))))
        for name in ("adam_beta1", "adam_beta2"):
            assert (cells[name] == "") == (name not in r["config"]), (name, ln)


def test_latest_declarations_read_backwards_equal_the_full_walk():
    """The sampler reads the declarations from the newest trial back; the answer is the full walk's."""
    space = lora_space()
    ours = dict(space.distributions)
    name = next(iter(ours))
    other = FloatDistribution(0.0, 1.0) if not isinstance(ours[name], FloatDistribution) or ours[name].high != 1.0 else FloatDistribution(0.0, 2.0)
    trials = [
        optuna.trial.create_trial(params={}, distributions={}, value=0.0),
        optuna.trial.create_trial(params={name: other.low, "extra": other.low}, distributions={name: other, "extra": other},
                                  value=0.0),
        optuna.trial.create_trial(params={k: space.sample(1, 0)[0][k] for k in ours}, distributions=ours, value=0.0),
        optuna.trial.create_trial(params={name: other.low}, distributions={name: other}, value=0.0),
    ]
    for n in range(len(trials) + 1):
        full = SearchSpace.declared(trials[:n])
        assert space.declared_last(trials[:n]) == {k: d for k, d in full.items() if k in ours}
        assert space.relative_space_for(space.declared_last(trials[:n])) == space.relative_space_for(full)
    assert name not in space.relative_space_for(space.declared_last(trials))  # the latest declaration wins
