"""tools/gpu_collect.py's fast parts: records written here and read back there, merging per-worker files.

The whole pipeline (`tools/gpu_collect.py check`: real runs of two tiny models) takes minutes on a
busy 2-core CPU and is documented in docs/metadataset.md rather than run by the suite.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import optuna
import pytest

import trl_objectives.tasks as tasks_mod

_spec = importlib.util.spec_from_file_location("gpu_collect", Path(__file__).parent.parent / "tools" / "gpu_collect.py")
gpu_collect = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_collect)


def test_dumped_records_are_what_the_workers_read(tmp_path, monkeypatch):
    path = tmp_path / "records.json"
    gpu_collect.dump(str(path), ["signal-numbers", "fanoutqa-sports"], 40, 0)
    blob = json.loads(path.read_text())
    # capped at each task's pool: 31 signals; a natural task has 12 questions per unit
    assert blob["facts"] == {"signal-numbers": 31, "fanoutqa-sports": 20}
    assert len(blob["records"]["fanoutqa-sports"]) == 240
    expected = tasks_mod.task_records("signal-numbers", 31, seed=0)
    monkeypatch.setattr(tasks_mod, "task_records", tasks_mod.task_records)  # restored after the test
    gpu_collect._patch_records(str(path))
    assert tasks_mod.task_records("signal-numbers", 31, seed=0) == expected
    assert tasks_mod.load_task("fanoutqa-sports", 20, seed=0).name == "fanoutqa-sports"
    with pytest.raises(ValueError, match="were not dumped"):
        tasks_mod.task_records("signal-numbers", 30, seed=0)
    with pytest.raises(ValueError, match="were not dumped"):
        tasks_mod.task_records("weekdays", 31, seed=0)


def test_merge_copies_every_worker_file_once(tmp_path, capsys):
    files = []
    for task in ("a", "b"):
        db = tmp_path / f"m__{task}.db"
        study = optuna.create_study(storage=f"sqlite:///{db}", study_name=f"{task}/m")
        study.set_user_attr(gpu_collect.HARDWARE, {"device": "X", "concurrent_runs": 3})
        study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={1: 2.0, 2: 1.0}))
        files.append(str(db))
    into = tmp_path / "all.db"
    gpu_collect.merge(files, str(into))
    gpu_collect.merge(files, str(into))  # again: nothing doubled
    url = f"sqlite:///{into}"
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(url, include_best_trial=False))
    assert names == ["a/m", "b/m"]
    study = optuna.load_study(study_name="a/m", storage=url)
    assert len(study.trials) == 1 and study.trials[0].intermediate_values == {1: 2.0, 2: 1.0}
    assert study.user_attrs[gpu_collect.HARDWARE]["concurrent_runs"] == 3
    assert capsys.readouterr().out.count("skipped") == 2
