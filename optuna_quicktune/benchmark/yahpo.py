"""YAHPO-Gym replay: curves and costs from a YAHPO surrogate folder (``model.onnx``).

:class:`YahpoScenario` queries the ONNX surrogate with the fidelity parameter, the metric and the
cost output named by the caller (or by a preset, or by the folder's ``yahpo.json``). The fidelity
may be epochs (cumulative cost: resuming a run pays only the new steps) or a training-set fraction
(``cost_mode="per-fidelity"``: each level is a retraining). Inputs that are not hyperparameters
(a replicate index such as rbv2's ``repl``) are held constant (``constants``). The scenario
interface and its step-cost conventions are in :mod:`~optuna_quicktune.benchmark.scenarios`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from optuna_quicktune.benchmark.configspace import configspace_to_space
from optuna_quicktune.benchmark.scenarios import Curves, Scenario, finite_number

__all__ = ["YahpoScenario", "YAHPO_PRESETS", "LCBENCH_DEFAULT", "lcbench"]

#: Input/output layouts of YAHPO-Gym scenarios (from yahpo_gym's benchmark configs). A folder can
#: also carry its own ``yahpo.json`` with the same keys, or the caller passes them explicitly.
YAHPO_PRESETS: dict[str, dict[str, Any]] = {
    "lcbench": {
        "y_names": ["time", "val_accuracy", "val_cross_entropy", "val_balanced_accuracy", "test_cross_entropy", "test_balanced_accuracy"],
        "y_minimize": [True, False, True, False, True, False],
        "cont_names": ["epoch", "batch_size", "learning_rate", "momentum", "weight_decay", "num_layers", "max_units", "max_dropout"],
        "cat_names": ["OpenML_task_id"],
        "instance_name": "OpenML_task_id",
        "fidelity_param": "epoch",
        "runtime_name": "time",
    },
}
_IAML_Y = ["mmce", "f1", "auc", "logloss", "ramtrain", "rammodel", "rampredict", "timetrain", "timepredict", "mec", "ias", "nf"]
_IAML_MIN = [True, False, False, True, True, True, True, True, True, True, True, True]
for _name, _cont, _cat in [
    ("iaml_ranger", ["num.trees", "sample.fraction", "mtry.ratio", "min.node.size", "num.random.splits", "trainsize"],
     ["task_id", "replace", "respect.unordered.factors", "splitrule"]),
    ("iaml_rpart", ["cp", "maxdepth", "minbucket", "minsplit", "trainsize"], ["task_id"]),
    ("iaml_glmnet", ["alpha", "s", "trainsize"], ["task_id"]),
    ("iaml_xgboost", ["nrounds", "eta", "gamma", "lambda", "alpha", "subsample", "max_depth", "min_child_weight",
                      "colsample_bytree", "colsample_bylevel", "rate_drop", "skip_drop", "trainsize"], ["task_id", "booster"]),
]:
    YAHPO_PRESETS[_name] = {
        "y_names": _IAML_Y, "y_minimize": _IAML_MIN, "cont_names": _cont, "cat_names": _cat,
        "instance_name": "task_id", "fidelity_param": "trainsize", "runtime_name": "timetrain",
        "cost_mode": "per-fidelity",
    }

#: A fixed LCBench configuration chosen a priori (common SGD-MLP settings; not tuned on any task).
LCBENCH_DEFAULT = {
    "batch_size": 128, "learning_rate": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
    "num_layers": 3, "max_units": 256, "max_dropout": 0.1,
}


def _parse_codomain(param_set_r: str) -> dict[str, str]:
    """``{target: "maximize"|"minimize"}`` from a paradox ``param_set.R`` codomain, if present."""
    m = re.search(r"codomain\s*=\s*ps\((.*?)\n\)", param_set_r, re.S)
    if not m:
        return {}
    return {a: b for a, b in re.findall(r"(\w+)\s*=\s*p_dbl\([^)]*tags\s*=\s*\"(maximize|minimize)\"", m.group(1))}


class YahpoScenario(Scenario):
    """Curves from a YAHPO-Gym ONNX surrogate folder.

    Args:
        folder: Holds ``config_space.json``, ``encoding.json`` and ``model.onnx`` (and optionally
            ``tasks.txt``, ``metafeatures.json``, ``param_set.R``, ``yahpo.json``).
        fidelity: Name of the fidelity parameter (e.g. ``epoch``, ``trainsize``).
        metric: Output to optimise (e.g. ``val_accuracy``).
        cost: Output holding the training cost in seconds (e.g. ``time``, ``timetrain``).
        preset: Input/output layout; by default ``yahpo.json`` in the folder, else the preset named
            like the folder, else ``lcbench`` if the inputs match it.
        fidelity_values: The fidelity values that make steps ``1..L`` (default: every integer of an
            int fidelity's range; ``fidelity_steps`` geometrically spaced levels of a float one).
        cost_mode: ``"cumulative"`` (the cost output counts from the start of training, as epochs
            do) or ``"per-fidelity"`` (each level is its own training run). Default from the preset.
        tasks: Instance ids to use (default ``tasks.txt`` of the folder, else every instance).
        metafeatures: ``"core"`` uses the ``core`` list of ``metafeatures.json`` (if present),
            ``"none"`` runs dataset-agnostic, or pass a list of names.
        constants: Inputs held at one value in every query and left out of the search space (a
            replicate index such as rbv2's ``repl``, or a second fidelity-like input). Merged over
            the layout's ``"constants"`` (``yahpo.json``). An input named ``repl`` that is neither
            the fidelity nor given here is held at its largest value: YAHPO lists it as a
            fidelity of the rbv2 scenarios, and tuning it would let an optimiser pick a lucky
            replicate.

    The metric defaults to the layout's ``"metric"``, else ``val_accuracy`` if the model has it,
    else the model's first output that is not the cost. The cost mode defaults to the layout's
    ``"cost_mode"``, else ``"per-fidelity"`` for a float fidelity (a training-set fraction is a
    retraining) and ``"cumulative"`` for an integer one (epochs continue).
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        fidelity: str | None = None,
        metric: str | None = None,
        cost: str | None = None,
        direction: str | None = None,
        preset: str | Mapping[str, Any] | None = None,
        fidelity_values: Sequence[float] | None = None,
        fidelity_steps: int = 10,
        cost_mode: str | None = None,
        tasks: Sequence[str] | None = None,
        metafeatures: str | Sequence[str] = "core",
        default_config: Mapping[str, Any] | None = None,
        name: str | None = None,
        threads: int = 1,
        constants: Mapping[str, Any] | None = None,
    ) -> None:
        self.folder = Path(folder)
        for f in ("config_space.json", "encoding.json", "model.onnx"):
            if not (self.folder / f).exists():
                raise FileNotFoundError(
                    f"{self.folder / f} not found: a YAHPO scenario folder needs config_space.json, "
                    "encoding.json and model.onnx."
                )
        layout = self._layout(preset)
        self.layout = layout
        self.name = name or self.folder.name
        self.fidelity_param = fidelity or layout.get("fidelity_param")
        self.cost_name = cost or layout.get("runtime_name")
        y_names = list(layout["y_names"])
        self.metric = metric or layout.get("metric") or _default_metric(y_names, self.cost_name)
        for what, v in (("metric", self.metric), ("cost", self.cost_name)):
            if v not in y_names:
                raise ValueError(f"The {what} output {v!r} is not one of the model's outputs {y_names}.")
        self._y_metric = y_names.index(self.metric)
        self._y_cost = y_names.index(self.cost_name)
        if direction is None:
            codomain = {}
            if (self.folder / "param_set.R").exists():
                codomain = _parse_codomain((self.folder / "param_set.R").read_text())
            if self.metric in codomain:
                direction = codomain[self.metric]
            elif "y_minimize" in layout:
                direction = "minimize" if layout["y_minimize"][self._y_metric] else "maximize"
            else:
                raise ValueError(f"Say whether {self.metric!r} is maximised or minimised (direction=...).")
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"direction must be 'maximize' or 'minimize', not {direction!r}.")
        self.direction = direction
        self.cont_names = list(layout["cont_names"])
        self.cat_names = list(layout["cat_names"])
        self.instance_name = layout.get("instance_name") or self.cat_names[0]
        if self.fidelity_param not in self.cont_names:
            raise ValueError(f"The fidelity {self.fidelity_param!r} is not a continuous input {self.cont_names}.")

        cs_json = json.loads((self.folder / "config_space.json").read_text())
        cs_names = {hp["name"] for hp in cs_json["hyperparameters"]}
        wanted = {**dict(layout.get("constants") or {}), **dict(constants or {})}
        for n in (self.instance_name, self.fidelity_param):
            if n in wanted:
                raise ValueError(f"{n!r} is the instance or the fidelity of this scenario; it cannot be held constant.")
        if "repl" in cs_names and "repl" not in wanted and self.fidelity_param != "repl":
            wanted["repl"] = None  # its largest value, filled in below
        unknown = sorted(set(wanted) - cs_names)
        if unknown:
            raise ValueError(f"Constant inputs {unknown} are not in config_space.json; its inputs are {sorted(cs_names)}.")
        self.space, cs_defaults, excluded = configspace_to_space(
            cs_json, exclude=[self.instance_name, self.fidelity_param, *wanted], name=f"yahpo-{self.name}"
        )
        missing = [n for n in self.cont_names + self.cat_names if n not in self.space.distributions and n not in excluded]
        if missing:
            raise ValueError(f"Inputs {missing} of the layout are not in config_space.json.")
        self.encoding: dict[str, dict[str, int]] = json.loads((self.folder / "encoding.json").read_text())
        self.constants = {n: _constant_value(n, v, excluded[n]["distribution"]) for n, v in wanted.items()}
        fid_d = excluded[self.fidelity_param]["distribution"]
        self.cost_mode = cost_mode or layout.get("cost_mode") or (
            "per-fidelity" if isinstance(fid_d, FloatDistribution) else "cumulative"
        )
        if self.cost_mode not in ("cumulative", "per-fidelity"):
            raise ValueError(f"cost_mode must be 'cumulative' or 'per-fidelity', not {self.cost_mode!r}.")
        if fidelity_values is None:
            if isinstance(fid_d, IntDistribution):
                fidelity_values = list(range(fid_d.low, fid_d.high + 1))
            elif isinstance(fid_d, FloatDistribution):
                lo, hi = float(fid_d.low), float(fid_d.high)
                fidelity_values = (
                    np.geomspace(lo, hi, fidelity_steps) if lo > 0 else np.linspace(lo, hi, fidelity_steps)
                ).tolist()
            else:
                raise ValueError(f"The fidelity {self.fidelity_param!r} must be numeric.")
        self.fidelity_values = np.asarray([float(v) for v in fidelity_values])
        if len(self.fidelity_values) < 2 or np.any(np.diff(self.fidelity_values) <= 0):
            raise ValueError("fidelity_values must be at least two increasing values.")
        self.fidelity_max = len(self.fidelity_values)
        self.fidelity_unit = self.fidelity_param

        inst = excluded[self.instance_name]["distribution"]
        valid = [str(c) for c in inst.choices]
        if tasks is None and (self.folder / "tasks.txt").exists():
            tasks = [ln.strip() for ln in (self.folder / "tasks.txt").read_text().splitlines() if ln.strip()]
        self.tasks = [str(t) for t in (tasks if tasks is not None else valid)]
        bad = [t for t in self.tasks if t not in valid or t not in self.encoding.get(self.instance_name, {})]
        if bad:
            raise ValueError(f"Tasks {bad} are not instances of {self.instance_name!r} in this scenario.")

        self._mf: dict[str, dict[str, float]] = {t: {} for t in self.tasks}
        mf_path = self.folder / "metafeatures.json"
        if metafeatures != "none" and mf_path.exists():
            mf_json = json.loads(mf_path.read_text())
            names = list(mf_json.get("core", [])) if metafeatures == "core" else list(metafeatures)
            per = mf_json.get("tasks", {})
            usable = [n for n in names if all(finite_number(per.get(t, {}).get(n)) for t in self.tasks)]
            self._mf = {t: {n: float(per[t][n]) for n in usable} for t in self.tasks}
        elif metafeatures not in ("none", "core"):
            raise FileNotFoundError(f"{mf_path} not found, so meta-features {list(metafeatures)} cannot be read.")

        if default_config is None and self.name == "lcbench":
            default_config = LCBENCH_DEFAULT
        if default_config is None:
            default_config = {k: v for k, v in cs_defaults.items() if k in self.space.distributions}
        if default_config is not None:
            default_config = {k: default_config[k] for k in self.space.active(default_config)}
            self.space.validate(default_config)
        self.default_config = dict(default_config) if default_config is not None else None
        self.model_name = self.name
        self._threads = threads
        self._session: Any = None
        self.replay_seconds = 0.0

    # ------------------------------------------------------------------ layout
    def _layout(self, preset: str | Mapping[str, Any] | None) -> dict[str, Any]:
        if isinstance(preset, Mapping):
            return dict(preset)
        if isinstance(preset, str):
            if preset not in YAHPO_PRESETS:
                raise ValueError(f"Unknown YAHPO preset {preset!r}; known: {sorted(YAHPO_PRESETS)}.")
            return dict(YAHPO_PRESETS[preset])
        own = self.folder / "yahpo.json"
        if own.exists():
            return json.loads(own.read_text())
        if self.folder.name in YAHPO_PRESETS:
            return dict(YAHPO_PRESETS[self.folder.name])
        cs = json.loads((self.folder / "config_space.json").read_text())
        names = {hp["name"] for hp in cs["hyperparameters"]}
        for key, p in YAHPO_PRESETS.items():
            if names == set(p["cont_names"]) | set(p["cat_names"]):
                return dict(p)
        raise ValueError(
            f"Cannot tell the input/output layout of {self.folder}: name a preset ({sorted(YAHPO_PRESETS)}), "
            "or put a yahpo.json with y_names, cont_names, cat_names (and instance_name, "
            "fidelity_param, runtime_name) in the folder."
        )

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_session"] = None
        return d

    @property
    def session(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self._threads
            opts.inter_op_num_threads = 1
            self._session = ort.InferenceSession(
                str(self.folder / "model.onnx"), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        return self._session

    def metafeatures(self, task: str) -> dict[str, float]:
        return dict(self._mf[str(task)])

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update((self.folder / "model.onnx").read_bytes()[:4096])
        h.update(str((self.folder / "model.onnx").stat().st_size).encode())
        h.update(json.dumps([self.space.fingerprint, self.metric, self.cost_name, self.cost_mode,
                             self.fidelity_values.tolist(), self.tasks, self._mf], sort_keys=True).encode())
        if self.constants:  # only when there are some: fingerprints of scenarios without stay as they were
            h.update(json.dumps(self.constants, sort_keys=True).encode())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ queries
    def query(self, task: str, configs: Sequence[Mapping[str, Any]], fidelities: Sequence[float]) -> np.ndarray:
        """Raw model outputs, shape ``(len(configs), len(fidelities), n_outputs)``."""
        t0 = time.perf_counter()
        n, f = len(configs), len(fidelities)
        x_cont = np.zeros((n, f, len(self.cont_names)), dtype=np.float32)
        x_cat = np.zeros((n, f, len(self.cat_names)), dtype=np.int32)
        # Inactive inputs go in as YAHPO Gym sends them: 0.0 (continuous) and "#na#" (categorical).
        active = [set(self.space.active(c)) for c in configs] if self.space.is_conditional else None
        for j, name in enumerate(self.cont_names):
            if name == self.fidelity_param:
                x_cont[:, :, j] = np.asarray(fidelities, dtype=np.float32)[None, :]
            elif name in self.constants:
                x_cont[:, :, j] = float(self.constants[name])
            else:
                x_cont[:, :, j] = np.asarray([
                    float(c[name]) if active is None or name in active[i] else 0.0 for i, c in enumerate(configs)
                ], dtype=np.float32)[:, None]
        for j, name in enumerate(self.cat_names):
            codes = self.encoding[name]
            if name == self.instance_name:
                vals = [str(task)] * n
            elif name in self.constants:
                vals = [str(self.constants[name])] * n
            else:
                vals = [str(c[name]) if active is None or name in active[i] else "#na#" for i, c in enumerate(configs)]
            try:
                x_cat[:, :, j] = np.asarray([codes[v] for v in vals], dtype=np.int32)[:, None]
            except KeyError as e:
                raise ValueError(f"Value {e} of {name!r} has no code in encoding.json.") from None
        out = self.session.run(None, {"x_cat": x_cat.reshape(n * f, -1), "x_cont": x_cont.reshape(n * f, -1)})[0]
        self.replay_seconds += time.perf_counter() - t0
        return out.reshape(n, f, -1).astype(np.float64)

    def curves(self, task: str, configs: Sequence[Mapping[str, Any]]) -> Curves:
        if not len(configs):
            z = np.zeros((0, self.fidelity_max))
            return Curves(z, z, z)
        out = self.query(task, configs, self.fidelity_values)
        values = out[:, :, self._y_metric]
        raw_cost = np.maximum(out[:, :, self._y_cost], 1e-6)
        if self.cost_mode == "cumulative":
            cum = np.maximum.accumulate(raw_cost, axis=1)
            step = np.diff(np.concatenate([np.zeros((len(configs), 1)), cum], axis=1), axis=1)
            step = np.maximum(step, 1e-6)
            scratch = np.cumsum(step, axis=1)
        else:
            step = raw_cost
            scratch = raw_cost
        return Curves(values, step, scratch)

    def final_values(self, task: str, configs: Sequence[Mapping[str, Any]], chunk: int = 20000) -> tuple[np.ndarray, np.ndarray]:
        """Score and from-scratch cost at the largest fidelity only (cheap, for large samples)."""
        vals, costs = [], []
        for i in range(0, len(configs), chunk):
            out = self.query(task, configs[i : i + chunk], self.fidelity_values[-1:])
            vals.append(out[:, 0, self._y_metric])
            c = out[:, 0, self._y_cost]
            costs.append(c)
        return np.concatenate(vals), np.concatenate(costs)


def _default_metric(y_names: Sequence[str], cost_name: str | None) -> str:
    if "val_accuracy" in y_names:
        return "val_accuracy"
    return next((y for y in y_names if y != cost_name), y_names[0])


def _constant_value(name: str, value: Any, dist: BaseDistribution) -> Any:
    """The value an input is held at: checked against its ConfigSpace range (None: its largest value)."""
    if value is None:
        if isinstance(dist, CategoricalDistribution):
            raise ValueError(f"Say which value to hold {name!r} at (one of {list(dist.choices)}).")
        return dist.high
    if isinstance(dist, CategoricalDistribution):
        match = [c for c in dist.choices if str(c) == str(value)]
        if not match:
            raise ValueError(f"Constant {name}={value!r} is not one of {list(dist.choices)}.")
        return match[0]
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Constant {name}={value!r} is not a number; {name!r} is numeric.") from None
    if not dist.low <= v <= dist.high:
        raise ValueError(f"Constant {name}={value!r} is outside its range [{dist.low}, {dist.high}].")
    return int(v) if isinstance(dist, IntDistribution) else v


def lcbench(folder: str | Path, *, epochs: str = "2-51", **kwargs: Any) -> YahpoScenario:
    """The YAHPO LCBench scenario with its usual choices: val_accuracy (maximise), cost ``time``.

    ``epochs="2-51"`` (default) keeps the 50 trained epochs (epoch 1 is the untrained network and
    52 a duplicate final record, see USAGE.md); ``"1-52"`` keeps all 52 records.
    """
    lo, hi = (int(x) for x in epochs.split("-"))
    kwargs.setdefault("fidelity", "epoch")
    kwargs.setdefault("metric", "val_accuracy")
    kwargs.setdefault("cost", "time")
    kwargs.setdefault("preset", "lcbench")
    kwargs.setdefault("name", "lcbench")
    return YahpoScenario(folder, fidelity_values=list(range(lo, hi + 1)), **kwargs)
