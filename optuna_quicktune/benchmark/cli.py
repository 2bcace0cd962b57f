"""``quicktune bench``: the replay benchmark from the command line.

Wire it into a CLI with ``add_bench_parser(subparsers)``; the parsed namespace's ``func`` is
:func:`run_bench`.

Examples::

    quicktune bench --lcbench ../shared/benchmarks/yahpo-lcbench --seeds 5 --out results/lcbench
    quicktune bench --yahpo path/to/iaml_glmnet --fidelity trainsize --metric auc --cost timetrain \\
        --cost-mode per-fidelity --fidelity-steps 8 --seeds 3 --out results/iaml
    quicktune bench --yahpo ../shared/benchmarks/yahpo-rbv2_rpart --seeds 3 --out results/rpart  # repl held at 10
    quicktune bench --table runs.csv --seeds 3 --out results/table     # MetaDataset.to_csv output
    quicktune bench --storage sqlite:///meta.db --seeds 3 --out results/storage
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_bench_parser", "run_bench", "build_scenario", "main"]


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    from optuna_quicktune.benchmark.methods import DEFAULT_METHODS

    p = subparsers.add_parser(
        "bench",
        help="Replay benchmark: QuickTune against baselines on a simulated clock (leave-one-task-out).",
        description="Replay benchmark of QuickTune against per-task optimisers and transfer baselines on "
        "a simulated clock, leave-one-task-out. Writes results.json, results.md and PNG plots.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_argument_group("scenario (give exactly one source)")
    src.add_argument("--lcbench", metavar="DIR", help="YAHPO LCBench folder (val_accuracy, cost time, epochs --epochs)")
    src.add_argument("--yahpo", metavar="DIR", help="any YAHPO-Gym folder (config_space.json, encoding.json, model.onnx)")
    src.add_argument("--table", metavar="FILE", help="a MetaDataset table (.csv or .parquet written by MetaDataset.to_csv/to_parquet)")
    src.add_argument("--storage", metavar="URL", help="an Optuna storage following the quicktune storage contract")
    src.add_argument("--studies", help="comma-separated study names of --storage (default: all)")
    src.add_argument("--simulated", type=int, metavar="N", help="N tasks of the simulated family (for demos and tests)")
    y = p.add_argument_group("YAHPO options")
    y.add_argument("--fidelity", help="fidelity parameter (e.g. epoch, trainsize)")
    y.add_argument("--metric", help="model output to optimise (e.g. val_accuracy)")
    y.add_argument("--cost", help="model output holding the training cost in seconds (e.g. time)")
    y.add_argument("--direction", choices=["maximize", "minimize"], help="default: from param_set.R or the preset")
    y.add_argument("--preset", help="input/output layout (lcbench, iaml_*) when the folder has no yahpo.json")
    y.add_argument("--fidelity-values", help="fidelity values that make the steps: 'lo-hi' (integers) or a comma list")
    y.add_argument("--fidelity-steps", type=int, default=10, help="levels of a float fidelity (geometric spacing)")
    y.add_argument("--cost-mode", choices=["cumulative", "per-fidelity"], help="cumulative (epochs) or per-fidelity (retrain per level)")
    y.add_argument("--epochs", default="2-51", help="LCBench epochs used as steps 1..L ('2-51': the 50 trained epochs; '1-52': all records)")
    y.add_argument("--yahpo-constant", action="append", default=[], metavar="NAME=VALUE",
                   help="hold an input at one value and leave it out of the search space (repeatable; "
                   "adds to yahpo.json's \"constants\"; rbv2's repl is held at 10 unless given)")
    y.add_argument("--metafeatures", default="core", help="'core' (metafeatures.json's core list), 'none', or comma-separated names")
    p.add_argument("--tasks", help="comma-separated test tasks (default: every task; meta-training always uses the others)")
    p.add_argument("--max-tasks", type=int, help="use only the first N tasks of the scenario (smoke runs)")
    p.add_argument("--methods", help=f"comma-separated methods (default: {','.join(DEFAULT_METHODS)}, plus zero-shot for LLM tables with base-model scores)")
    p.add_argument("--seeds", default="5", help="number of seeds (0..N-1) or a comma-separated list")
    p.add_argument("--budget-factor", type=float, default=20.0, help="budget = factor x median cost of one full run")
    p.add_argument("--meta-configs", type=int, default=128, help="configurations per meta-training task")
    p.add_argument("--meta-steps", type=int, default=400, help="meta-training steps per fold (early stopping keeps the best; fixed steps make the surrogate independent of machine speed)")
    p.add_argument("--meta-time-limit", type=float, default=0.0, help="meta-training seconds per fold (0: none; a limit makes results depend on machine speed)")
    p.add_argument("--reference-size", type=int, default=20000, help="random configurations of the regret reference (YAHPO)")
    p.add_argument("--portfolio-size", type=int, default=64)
    p.add_argument("--top-k-first", type=int, default=32, help="configurations of each one-step round of top-k-1step")
    p.add_argument("--default-config", help="JSON of the default configuration (overrides the scenario's; a LoRA storage defaults to DEFAULT_LORA_CONFIG)")
    p.add_argument("--quicktune-kwargs", default="{}", help="JSON of extra QuickTuneSampler arguments")
    p.add_argument("--pruner-kwargs", default="{}", help="JSON of extra QuickTunePruner arguments (quicktune methods)")
    p.add_argument("--meta-kwargs", default="{}", help='JSON of extra meta_train arguments for the folds\' surrogates (e.g. \'{"noise": "prefix"}\')')
    p.add_argument("--jobs", type=int, default=2, help="worker processes")
    p.add_argument("--out", default="results/bench", help="results folder (meta-training is cached in OUT/cache)")
    p.add_argument("--resume", action="store_true", help="keep the runs already in OUT/runs.jsonl (same settings) and run only the missing ones")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_bench)
    return p


def _list(s: str | None) -> list[str] | None:
    return None if not s else [x.strip() for x in s.split(",") if x.strip()]


def _fidelity_values(s: str | None) -> list[float] | None:
    if not s:
        return None
    if "-" in s and "," not in s:
        lo, hi = (int(x) for x in s.split("-"))
        return list(range(lo, hi + 1))
    return [float(x) for x in s.split(",")]


def _constants(items: list[str]) -> dict[str, str]:
    """``["repl=10"]`` -> ``{"repl": "10"}``; the scenario checks names and values against its inputs."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise SystemExit(f"quicktune bench: --yahpo-constant wants NAME=VALUE (e.g. repl=10), got {item!r}.")
        out[name.strip()] = value.strip()
    return out


def build_scenario(args: argparse.Namespace) -> Any:
    from optuna_quicktune.benchmark import scenarios as sc
    from optuna_quicktune.benchmark import yahpo
    from optuna_quicktune.metadataset import MetaDataset

    sources = [k for k in ("lcbench", "yahpo", "table", "storage", "simulated") if getattr(args, k, None)]
    if len(sources) != 1:
        raise SystemExit(f"quicktune bench: give exactly one of --lcbench, --yahpo, --table, --storage, --simulated (got {sources or 'none'}).")
    default = json.loads(args.default_config) if args.default_config else None
    mf: Any = args.metafeatures if args.metafeatures in ("core", "none") else _list(args.metafeatures)
    if args.lcbench:
        kw: dict[str, Any] = {"metafeatures": mf, "default_config": default}
        for k in ("metric", "cost", "direction"):
            if getattr(args, k):
                kw[k] = getattr(args, k)
        return yahpo.lcbench(args.lcbench, epochs=args.epochs, **kw)
    if args.yahpo:
        return yahpo.YahpoScenario(
            args.yahpo, fidelity=args.fidelity, metric=args.metric, cost=args.cost, direction=args.direction,
            preset=args.preset, fidelity_values=_fidelity_values(args.fidelity_values),
            fidelity_steps=args.fidelity_steps, cost_mode=args.cost_mode, metafeatures=mf, default_config=default,
            constants=_constants(getattr(args, "yahpo_constant", None) or []),
        )
    if args.table:
        path = Path(args.table)
        md = MetaDataset.from_parquet(path) if path.suffix == ".parquet" else MetaDataset.from_csv(path)
        return sc.TableScenario(md, name=path.stem, default_config=default)
    if args.storage:
        md = MetaDataset.from_storage(args.storage, _list(args.studies), metafeatures="intersection")
        zero_shot = sc.zero_shot_from_storage(args.storage, [t.name for t in md.tasks])
        if default is None:  # a LoRA collection's default is the configuration PEFT/TRL tutorials use
            from optuna_quicktune.space import DEFAULT_LORA_CONFIG, lora_space

            if md.space.fingerprint == lora_space().fingerprint:
                default = dict(DEFAULT_LORA_CONFIG)
        return sc.TableScenario(md, name="storage", default_config=default, zero_shot=zero_shot)
    from optuna_quicktune.simulate import SimulatedFamily
    from optuna_quicktune.space import DEFAULT_LORA_CONFIG

    fam = SimulatedFamily(args.simulated, fidelity_max=10, seed=0)
    md = fam.metadataset(max(args.meta_configs, 64), seed=1)
    return sc.TableScenario(md, name=f"simulated-{args.simulated}", default_config=default or DEFAULT_LORA_CONFIG)


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{option} is not valid JSON ({e}); write e.g. {option} '{{\"margin\": 0.2}}'.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a JSON object of argument names and values, got {text!r}.")
    return value


def run_bench(args: argparse.Namespace) -> int:
    from optuna_quicktune.benchmark.report import REPORT_FRACTIONS
    from optuna_quicktune.benchmark.runner import BenchConfig, run_benchmark

    scenario = build_scenario(args)
    tasks = _list(args.tasks)
    if args.max_tasks:
        scenario.tasks = scenario.tasks[: args.max_tasks]
        tasks = [t for t in (tasks or scenario.tasks) if t in scenario.tasks]
    from optuna_quicktune.benchmark.methods import DEFAULT_METHODS

    methods = _list(args.methods)
    if methods is None:
        methods = list(DEFAULT_METHODS) + (["zero-shot"] if scenario.has_zero_shot else [])
    seeds = list(range(int(args.seeds))) if args.seeds.isdigit() else [int(s) for s in _list(args.seeds) or []]
    cfg = BenchConfig(
        methods=methods, seeds=seeds, tasks=tasks, budget_factor=args.budget_factor,
        n_meta_configs=args.meta_configs, meta_steps=args.meta_steps,
        meta_time_limit=args.meta_time_limit or None, n_reference=args.reference_size,
        portfolio_size=args.portfolio_size, top_k_first=args.top_k_first, jobs=args.jobs,
        quicktune_kwargs=_json_object(args.quicktune_kwargs, "--quicktune-kwargs"),
        pruner_kwargs=_json_object(args.pruner_kwargs, "--pruner-kwargs"),
        meta_kwargs=_json_object(args.meta_kwargs, "--meta-kwargs"), progress=not args.no_progress, resume=args.resume,
    )
    result = run_benchmark(scenario, cfg, args.out)
    summary = result["summary"]["methods"]
    print(f"\nResults in {args.out}: " + ", ".join(result["files"]))
    print("average rank at " + ", ".join(f"{int(f * 100)}%" for f in REPORT_FRACTIONS) + " of the budget:")
    for m, e in summary.items():
        if "mean_rank" in e:
            idx = [round(f * 100) for f in REPORT_FRACTIONS]
            print(f"  {m:16s} " + "  ".join(f"{e['mean_rank'][i]:5.2f}" for i in idx))
    print(f"wall time {result['meta']['timings']['total_s']:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m optuna_quicktune.benchmark.cli bench ...``."""
    parser = argparse.ArgumentParser(prog="quicktune")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
