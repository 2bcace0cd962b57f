import logging

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution

from optuna_quicktune import contract
from optuna_quicktune.errors import EmptyMetaDatasetError, MetaFeatureError, MixedSpaceError
from optuna_quicktune.metadataset import MetaDataset
from optuna_quicktune.space import SearchSpace


def _assert_same(a: MetaDataset, b: MetaDataset) -> None:
    assert a.space == b.space
    assert [t.name for t in a.tasks] == [t.name for t in b.tasks]
    assert a.metafeature_names == b.metafeature_names
    for ta, tb in zip(a.tasks, b.tasks):
        assert dict(ta.metafeatures) == pytest.approx(dict(tb.metafeatures))
        assert ta.fidelity_max == tb.fidelity_max and ta.direction == tb.direction
    assert len(a.runs) == len(b.runs)
    key = lambda r: (r.task, a.space.config_id(r.config))  # noqa: E731
    for ra, rb in zip(sorted(a.runs, key=key), sorted(b.runs, key=key)):
        assert a.space.config_id(ra.config) == b.space.config_id(rb.config)
        np.testing.assert_allclose(ra.curve, rb.curve)
        np.testing.assert_allclose(ra.cost, rb.cost)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_storage_round_trip(family, tmp_path, kind):
    md = family.metadataset(6, seed=2, tasks=[0, 1, 2])
    if kind == "sqlite":
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'md.db'}")
    else:
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "md.log")))
    names = md.to_storage(storage)
    back = MetaDataset.from_storage(storage)
    _assert_same(md, back)
    study = optuna.load_study(study_name=names[0], storage=storage)
    assert study.user_attrs[contract.FIDELITY]["max"] == md.tasks[0].fidelity_max
    with pytest.raises(ValueError, match="already exist"):
        md.to_storage(storage)  # nothing the user stored is overwritten


def test_paused_and_resumed_trials_are_stitched(family, tmp_path):
    task = family.tasks[0]
    space = family.space
    config = space.sample(1, seed=5)[0]
    curve, steps = task.curve(config), task.step_costs(config)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=storage, study_name="t", direction="maximize")
    contract.describe_task(study, dataset="d", model="m", metric="score", fidelity_max=task.fidelity_max,
                           metafeatures=task.metafeatures, space=space)
    dists = dict(space.distributions)
    parent = optuna.trial.create_trial(
        params=config, distributions=dists, state=optuna.trial.TrialState.PRUNED,
        intermediate_values={s: float(curve[s - 1]) for s in (1, 2, 3)},
        user_attrs={contract.COST: np.cumsum(steps[:3]).tolist(), contract.CHECKPOINT: "ck", contract.PAUSED: True},
    )
    study.add_trial(parent)
    child = optuna.trial.create_trial(
        params=config, distributions=dists, value=float(curve[-1]),
        intermediate_values={s: float(curve[s - 1]) for s in range(4, task.fidelity_max + 1)},
        user_attrs={contract.COST: np.cumsum(steps[3:]).tolist(), contract.RESUME_OF: 0},
    )
    study.add_trial(child)
    md = MetaDataset.from_storage(storage)
    assert len(md.runs) == 1
    run = md.runs[0]
    np.testing.assert_allclose(run.curve, curve)
    np.testing.assert_allclose(run.cost, np.cumsum(steps))
    assert run.trials == (0, 1)


def test_contract_breakers_are_skipped_with_a_reason(family, tmp_path, caplog):
    storage = f"sqlite:///{tmp_path / 'x.db'}"
    family.metadataset(4, seed=0, tasks=[0]).to_storage(storage)
    optuna.create_study(storage=storage, study_name="no-contract").optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    good = optuna.load_study(study_name=family.tasks[0].name, storage=storage)
    dists = dict(family.space.distributions)
    cfg = family.space.sample(1, seed=9)[0]
    good.add_trial(optuna.trial.create_trial(params=cfg, distributions=dists, value=1.0,
                                             intermediate_values={1: 0.1, 99: 0.5}))  # step beyond max
    good.add_trial(optuna.trial.create_trial(params=cfg, distributions=dists, value=1.0,
                                             intermediate_values={1: 0.1}, user_attrs={contract.COST: [1.0, 2.0]}))
    with caplog.at_level(logging.INFO, logger="optuna_quicktune.metadataset"):
        md = MetaDataset.from_storage(storage)
    assert len(md.tasks) == 1 and len(md.runs) == 4
    assert "no-contract" in caplog.text and "quicktune.task" in caplog.text
    assert "outside 1..10" in caplog.text and "entries for 1 reported steps" in caplog.text


def test_empty_storage_error(tmp_path):
    from optuna_quicktune.errors import StorageError

    with pytest.raises(StorageError, match="No database"):  # a mistyped path is not a new empty database
        MetaDataset.from_storage(f"sqlite:///{tmp_path / 'empty.db'}")
    assert not (tmp_path / "empty.db").exists()
    optuna.storages.get_storage(f"sqlite:///{tmp_path / 'empty.db'}")  # an existing database without studies
    with pytest.raises(EmptyMetaDatasetError, match="describe_task"):
        MetaDataset.from_storage(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(EmptyMetaDatasetError, match="not in the storage"):
        MetaDataset.from_storage(f"sqlite:///{tmp_path / 'empty.db'}", study_names=["nope"])


def test_mixed_spaces_error(family, tmp_path):
    storage = f"sqlite:///{tmp_path / 'mixed.db'}"
    family.metadataset(3, seed=0, tasks=[0]).to_storage(storage)
    other = optuna.create_study(storage=storage, study_name="other", direction="maximize")
    contract.describe_task(other, dataset="o", model="m", metric="s", fidelity_max=3, metafeatures=family.tasks[1].metafeatures)
    other.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                                              value=1.0, intermediate_values={1: 0.2, 2: 0.5, 3: 1.0}))
    with pytest.raises(MixedSpaceError, match="study_names"):
        MetaDataset.from_storage(storage)
    md = MetaDataset.from_storage(storage, study_names=["other"])
    assert md.space.names == ["x"]


def test_metafeature_mismatch(family, tmp_path):
    storage = f"sqlite:///{tmp_path / 'mf.db'}"
    md = family.metadataset(3, seed=0, tasks=[0, 1])
    md.to_storage(storage)
    s = optuna.load_study(study_name=md.tasks[1].name, storage=storage)
    s.set_user_attr(contract.METAFEATURES, {"lr_hint": -4.0})
    with pytest.raises(MetaFeatureError, match="lacks"):
        MetaDataset.from_storage(storage)
    assert MetaDataset.from_storage(storage, metafeatures="intersection").metafeature_names == ["lr_hint"]
    assert MetaDataset.from_storage(storage, metafeatures="none").metafeature_names == []


def test_csv_and_parquet_round_trip(family, tmp_path):
    md = family.metadataset(5, seed=3, tasks=[2, 3])
    _assert_same(md, MetaDataset.from_csv(md.to_csv(tmp_path / "md.csv")))
    _assert_same(md, MetaDataset.from_parquet(md.to_parquet(tmp_path / "md.parquet")))
    (tmp_path / "md.csv.space.json").unlink()
    with pytest.raises(FileNotFoundError, match="space="):
        MetaDataset.from_csv(tmp_path / "md.csv")
    _assert_same(md, MetaDataset.from_csv(tmp_path / "md.csv", space=md.space))
    with pytest.raises(MixedSpaceError, match="no column"):
        MetaDataset.from_csv(tmp_path / "md.csv", space=SearchSpace({"x": FloatDistribution(0, 1)}))
