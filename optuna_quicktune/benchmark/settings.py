"""What a benchmark run is asked to do, and what identifies the records and caches it makes.

Why a module of its own: ``--resume`` and the fold caches reuse earlier results only when every
setting they depend on is the same, so the settings, the library defaults that enter those keys
and the keys themselves belong together, apart from the orchestration in :mod:`.runner`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from optuna_quicktune.benchmark.methods import DEFAULT_METHODS, METHODS, PORTFOLIO_METHODS
from optuna_quicktune.benchmark.scenarios import Scenario

__all__ = ["BenchConfig", "REFERENCE_SEEDING", "content_hash", "meta_settings", "run_key"]


@dataclass
class BenchConfig:
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    tasks: list[str] | None = None  # test tasks (default: all); meta-training always uses the others
    budget_factor: float = 20.0  # budget = factor x median cost of one full run of the task
    n_meta_configs: int = 128  # configurations per meta-training task (full curves)
    table_seed: int = 0
    meta_steps: int = 400  # fixed, so that the surrogate does not depend on the machine's speed
    meta_time_limit: float | None = None  # seconds per fold (a safety net; None: steps only)
    meta_seed: int = 0
    n_reference: int = 20000  # random configurations of the normalisation set (YAHPO)
    reference_seed: int = 12345
    portfolio_size: int = 64
    top_k_first: int = 32
    max_trials: int = 5000
    jobs: int = 2
    quicktune_kwargs: dict[str, Any] = field(default_factory=dict)
    pruner_kwargs: dict[str, Any] = field(default_factory=dict)  # QuickTunePruner arguments
    meta_kwargs: dict[str, Any] = field(default_factory=dict)  # meta_train arguments (the folds' surrogates)
    progress: bool = True
    audit: bool = False  # keep a ledger of every charge in each run's record (for tests)
    resume: bool = False  # keep the runs already in <out>/runs.jsonl (same settings), run the rest

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"Unknown methods {unknown}; choose from {sorted(METHODS)}.")
        if not self.seeds:
            raise ValueError("Give at least one seed (--seeds N runs seeds 0..N-1; --seeds 3,7 runs those two).")
        if self.budget_factor <= 0:
            raise ValueError("budget_factor must be > 0.")
        if self.jobs < 1:
            raise ValueError("jobs must be >= 1.")
        # Checked here, not in each run: an unknown argument would otherwise fail every QuickTune
        # run one by one, and the report would rank methods that never ran.
        from optuna_quicktune.pruner import QuickTunePruner
        from optuna_quicktune.sampler import QuickTuneSampler

        for cls, given, option, fixed in (
            (QuickTuneSampler, self.quicktune_kwargs, "quicktune_kwargs (--quicktune-kwargs)", _SAMPLER_SET_BY_BENCH),
            (QuickTunePruner, self.pruner_kwargs, "pruner_kwargs (--pruner-kwargs)", {"sampler"}),
        ):
            allowed = set(_init_defaults(cls)) - fixed
            bad = sorted(set(given) - allowed)
            if bad:
                raise ValueError(f"{option}: {cls.__name__} has no argument(s) {bad} that the benchmark lets you set; "
                                 f"choose from {sorted(allowed)}.")
        allowed = set(_meta_train_defaults()) - _META_SET_BY_BENCH
        bad = sorted(set(self.meta_kwargs) - allowed)
        if bad:
            raise ValueError(f"meta_kwargs (--meta-kwargs): meta_train has no argument(s) {bad} that the benchmark lets "
                             f"you set; choose from {sorted(allowed)}.")


#: QuickTuneSampler arguments the benchmark sets itself (the fold's surrogate, the task, the seed).
_SAMPLER_SET_BY_BENCH = {"surrogate", "metafeatures", "fidelity_max", "seed", "refit"}


#: meta_train arguments the benchmark sets itself (--meta-steps, --meta-seed, --meta-time-limit).
_META_SET_BY_BENCH = {"steps", "seed", "time_limit", "progress"}


def _meta_train_defaults() -> dict[str, Any]:
    from optuna_quicktune.surrogate import meta_train

    return _defaults(meta_train)


def meta_settings(cfg: "BenchConfig") -> list[Any]:
    """The fold surrogates' meta-training settings beyond steps, seed and time limit, for cache keys.

    Empty for the models every cache before stop 16 was made with (constant noise and mean), so
    those caches stay valid; any other setting, given or a changed default, makes a new key.
    """
    defaults = _meta_train_defaults()
    models = {k: cfg.meta_kwargs.get(k, defaults.get(k, "constant")) for k in ("noise", "mean")}
    if cfg.meta_kwargs.get("residual", defaults.get("residual", False)):
        models["residual"] = True  # stop 17; absent when off, so stop-16 keys stay as they were
    calibration = cfg.meta_kwargs.get("calibration", defaults.get("calibration", "global"))
    if calibration != "global":
        models["calibration"] = calibration  # stop 23; absent when global, so earlier keys stay as they were
    targets = cfg.meta_kwargs.get("targets", defaults.get("targets", "global"))
    if targets != "global":
        models["targets"] = targets  # stop 27; absent when global, so earlier keys stay as they were
    rest = {k: v for k, v in cfg.meta_kwargs.items() if k not in models and k not in ("residual", "calibration", "targets")}
    if set(models.values()) == {"constant"} and not rest:
        return []
    return [dict(rest, **models)]


def _init_defaults(cls: type) -> dict[str, Any]:
    """The keyword arguments of ``cls.__init__`` that have defaults, with them."""
    return _defaults(cls.__init__)


def _defaults(fn: Any) -> dict[str, Any]:
    import inspect

    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def content_hash(*parts: Any) -> str:
    """A short key for cache file names and run keys: equal exactly when the JSON of ``parts`` is."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


#: How reference sets are seeded; part of the cache and run keys, so that records and references made
#: when the seed followed a task's place in the *selected* tasks are not reused.
REFERENCE_SEEDING = "scenario-task-index"


def _quicktune_defaults() -> dict[str, Any]:
    """The package version and the sampler's and pruner's default arguments.

    Part of QuickTune's run key, so that ``--resume`` does not reuse records made before a default
    changed (e.g. ``QuickTunePruner(keep_leader=...)``) as if the current code had made them.
    """
    from optuna_quicktune import __version__
    from optuna_quicktune.pruner import QuickTunePruner
    from optuna_quicktune.sampler import QuickTuneSampler

    out: dict[str, Any] = {"version": __version__}
    for cls in (QuickTuneSampler, QuickTunePruner):
        out[cls.__name__] = {k: repr(v) for k, v in _init_defaults(cls).items()}
    return out


def run_key(scenario: Scenario, cfg: BenchConfig, method: str) -> str:
    """What a method's recorded runs depend on: the scenario, the budget and its own settings."""
    common = [scenario.fingerprint(), scenario.default_config, cfg.budget_factor, cfg.n_reference,
              cfg.reference_seed, REFERENCE_SEEDING, cfg.max_trials, cfg.audit]
    own: list[Any] = []
    if method.startswith("quicktune"):
        own = [cfg.n_meta_configs, cfg.table_seed, cfg.meta_steps, cfg.meta_time_limit, cfg.meta_seed, cfg.quicktune_kwargs,
               cfg.pruner_kwargs, _quicktune_defaults(), *meta_settings(cfg)]
    elif method in PORTFOLIO_METHODS:
        own = [cfg.n_meta_configs, cfg.table_seed, cfg.portfolio_size]
    elif method == "top-k-1step":
        own = [cfg.top_k_first]
    return content_hash(method, common, own)
