"""Fold runs completed on a CPU into a GPU-collected storage, with costs in the storage's unit.

Why: the shipped fact-QA collection was made on a lent GPU, and its costs (``quicktune.cost``) are
GPU seconds. Runs that the GPU lease did not finish were completed later on the development CPU
with ``quicktune collect`` on copies of the storage. Their raw CPU seconds would be 5-12 times
larger than the GPU costs beside them, and a cost surrogate or a replay clock would then think
those configurations are expensive. Every such configuration already has a partial run on the GPU
(stopped after 1-2 epochs), so the CPU run is converted with the ratio of the two measurements at
the last epoch both have: ``cost_gpu_equiv[k] = cpu_cost[k] * gpu_cost[m] / cpu_cost[m]``. The raw
CPU costs are kept in ``quicktune.collect.cpu_cost`` and the conversion in
``quicktune.collect.cost_source``, so nothing measured is lost.

Usage::

    cp target.db a.db; quicktune collect --storage sqlite:///a.db ...   # on some tasks
    python tools/cpu_complete.py --into target.db a.db b.db
"""

from __future__ import annotations

import argparse
import copy
import json

import optuna

from optuna_quicktune.contract import CONFIG_ID, CONFIG_INDEX, COST, COST_SOURCE, CPU_COST


def _gpu_reference(study: optuna.Study, config_id: str) -> list[float] | None:
    """The longest cost curve of this configuration already in the target study (the GPU run)."""
    best: list[float] | None = None
    for t in study.get_trials(deepcopy=False):
        cost = t.user_attrs.get(COST)
        if t.user_attrs.get(CONFIG_ID) == config_id and cost and (best is None or len(cost) > len(best)):
            best = [float(c) for c in cost]
    return best


def complete(into: str, sources: list[str]) -> list[dict[str, object]]:
    """Add the trials of ``sources`` that ``into`` lacks (by study and trial number), costs converted."""
    target_url = f"sqlite:///{into}"
    added: list[dict[str, object]] = []
    for src in sources:
        src_url = f"sqlite:///{src}"
        for summary in optuna.get_all_study_summaries(src_url, include_best_trial=False):
            source = optuna.load_study(study_name=summary.study_name, storage=src_url)
            target = optuna.load_study(study_name=summary.study_name, storage=target_url)
            have = len(target.get_trials(deepcopy=False))
            for t in source.get_trials(deepcopy=False)[have:]:
                if not t.state.is_finished():
                    raise RuntimeError(f"{src}: trial {t.number} of {summary.study_name} is {t.state.name}; finish it first.")
                t = copy.deepcopy(t)
                cpu = [float(c) for c in t.user_attrs.get(COST) or []]
                gpu = _gpu_reference(target, str(t.user_attrs.get(CONFIG_ID)))
                if cpu:
                    if not gpu:
                        raise RuntimeError(f"{summary.study_name}: no GPU run of {t.user_attrs.get(CONFIG_ID)} to scale by.")
                    m = min(len(gpu), len(cpu))
                    ratio = gpu[m - 1] / cpu[m - 1]
                    t.set_user_attr(CPU_COST, cpu)
                    t.set_user_attr(COST, [c * ratio for c in cpu])
                    t.set_user_attr(COST_SOURCE, (
                        f"run on a CPU (fp32, 1 thread); costs are CPU seconds x {ratio:.4f}, the ratio of this "
                        f"configuration's GPU run to this run at epoch {m}"
                    ))
                target.add_trial(t)
                added.append({"study": summary.study_name, "state": t.state.name,
                              "config": t.user_attrs.get(CONFIG_INDEX), "cpu_cost": cpu,
                              "cost": t.user_attrs.get(COST)})
    return added


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--into", required=True, help="the storage file to complete (SQLite path)")
    p.add_argument("sources", nargs="+", help="copies of it on which quicktune collect ran more trials")
    args = p.parse_args()
    for row in complete(args.into, args.sources):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
