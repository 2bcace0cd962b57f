"""Save and load a :class:`QuickTuneSurrogate` as ``weights.safetensors`` + ``surrogate.json``.

Nothing is pickled: tensors go through safetensors, everything else is JSON. Loading checks the
format version, the presence and shape of every tensor and the space fingerprint, and raises
:class:`SurrogateFormatError` with what is wrong and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from optuna_quicktune.errors import SurrogateFormatError
from optuna_quicktune.portfolio import PortfolioTable
from optuna_quicktune.space import SearchSpace
from optuna_quicktune.surrogate.model import CostSurrogate, PerformanceSurrogate, QuickTuneSurrogate, _all_tensors
from optuna_quicktune.surrogate.preprocessing import Batch, Preprocessing

__all__ = ["save", "load", "FORMAT_VERSION", "WEIGHTS_FILE", "CONFIG_FILE"]

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "surrogate.json"
_CONTEXT_FIELDS = ("x", "curve", "budget", "mf")


def save(s: QuickTuneSurrogate, directory: str | Path) -> Path:
    from safetensors.torch import save_file

    import optuna_quicktune

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in _all_tensors(s).items()}
    perf = s.performance
    if perf.context is not None and perf.context_y is not None:
        for f in _CONTEXT_FIELDS:
            tensors[f"context.{f}"] = getattr(perf.context, f).contiguous().clone()
        tensors["context.y"] = perf.context_y.contiguous().clone()
    tensors["meta_configs"] = torch.as_tensor(s.meta_configs, dtype=torch.float32).contiguous()
    if s.portfolio is not None:
        tensors.update(portfolio_tensors(s.portfolio))
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
    config = {
        "format_version": FORMAT_VERSION,
        "library_version": optuna_quicktune.__version__,
        "torch_version": torch.__version__,
        "space": s.space.to_json(),
        "preprocessing": s.prep.to_json(),
        "performance": {"hparams": perf.hparams, "std_scale": perf.std_scale, "std_scales": list(perf.std_scales),
                        "task_effect": perf.task_effect,
                        "residual": {"share": perf.gp.resid_share,
                                     "inv_scale": [] if perf.gp.resid_inv_scale is None else perf.gp.resid_inv_scale.tolist()}},
        "cost": {"hparams": s.cost.hparams, "trained": s.cost.trained},
        "info": s.info,
    }
    if s.portfolio is not None:
        config["portfolio"] = {"tasks": list(s.portfolio.tasks), "metafeature_names": list(s.portfolio.metafeature_names)}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True))
    return directory


def load(directory: str | Path) -> QuickTuneSurrogate:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise SurrogateFormatError(
                f"{p} is missing: a saved surrogate is a folder with {CONFIG_FILE} and {WEIGHTS_FILE} "
                "written by QuickTuneSurrogate.save()."
            )
    try:
        config: dict[str, Any] = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SurrogateFormatError(f"{cfg_path} is not valid JSON ({e}); the file is corrupted.") from e
    if not isinstance(config, dict):
        raise SurrogateFormatError(
            f"{cfg_path} holds a JSON {type(config).__name__}, not the object QuickTuneSurrogate.save() writes; "
            "the file is corrupted or not a saved surrogate."
        )
    version = config.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SurrogateFormatError(
            f"{cfg_path} has format_version {version!r}; a saved surrogate has a whole number from 1 to "
            f"{FORMAT_VERSION}. The file is corrupted or not a saved surrogate."
        )
    if version > FORMAT_VERSION:
        raise SurrogateFormatError(
            f"{directory} was saved in format {version} by optuna-quicktune "
            f"{config.get('library_version', '?')}; this version reads format {FORMAT_VERSION} and older. "
            "Upgrade optuna-quicktune."
        )
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SurrogateFormatError(f"{w_path} could not be read ({e}); the file is corrupted.") from e
    try:
        space = SearchSpace.from_json(config["space"])
        prep = Preprocessing.from_json(config["preprocessing"])
        perf = PerformanceSurrogate(**config["performance"]["hparams"])
        # Surrogates saved before the per-bin calibration have one factor for every row.
        perf.set_calibration(float(config["performance"]["std_scale"]),
                             [float(v) for v in config["performance"].get("std_scales") or ()])
        # Surrogates saved before the task effect existed have none (0): they predict as they did.
        perf.task_effect = float(config["performance"].get("task_effect", 0.0))
        # ... and before the residual correlation: none (share 0), so again the same predictions.
        resid = config["performance"].get("residual") or {"share": 0.0, "inv_scale": []}
        perf.set_residual(float(resid["share"]), [float(v) for v in resid["inv_scale"]])
        cost = CostSurrogate(**config["cost"]["hparams"])
        cost.trained = bool(config["cost"]["trained"])
    except (KeyError, TypeError, ValueError) as e:
        raise SurrogateFormatError(f"{cfg_path} lacks or garbles a field ({e!r}).") from e
    if perf.hparams["dim_x"] != space.dim:
        raise SurrogateFormatError(
            f"{cfg_path}: the network expects {perf.hparams['dim_x']} inputs but the space encodes to {space.dim}."
        )
    _load_module(perf.net, tensors, "perf.net.", w_path)
    _load_module(perf.gp, tensors, "perf.gp.", w_path)
    _load_module(cost.net, tensors, "cost.net.", w_path)
    if all(f"context.{f}" in tensors for f in (*_CONTEXT_FIELDS, "y")):
        ctx = Batch(*(tensors[f"context.{f}"] for f in _CONTEXT_FIELDS))
        perf.set_context(ctx, tensors["context.y"])
    meta = tensors.get("meta_configs")
    return QuickTuneSurrogate(
        space, prep, perf, cost,
        meta_configs=None if meta is None else meta.double().numpy(),
        info=config.get("info", {}),
        portfolio=portfolio_from_tensors(tensors, config.get("portfolio"), space.dim, w_path),
    )


def portfolio_tensors(p: PortfolioTable) -> dict[str, torch.Tensor]:
    # float64: the regret table's ties decide the greedy order, which must survive a round trip.
    return {
        "portfolio.X": torch.as_tensor(p.X, dtype=torch.float64).contiguous(),
        "portfolio.R": torch.as_tensor(p.R, dtype=torch.float64).contiguous(),
        "portfolio.metafeatures": torch.as_tensor(p.metafeatures, dtype=torch.float64).contiguous(),
    }


def portfolio_from_tensors(tensors: dict[str, torch.Tensor], record: Any, dim: int, path: Path) -> PortfolioTable | None:
    """The stored portfolio table, checked for shape; None for surrogates saved without one."""
    if record is None or "portfolio.R" not in tensors:
        return None
    try:
        names = tuple(str(n) for n in record["metafeature_names"])
        tasks = tuple(str(t) for t in record["tasks"])
        X, R, M = (tensors[f"portfolio.{k}"].double().numpy() for k in ("X", "R", "metafeatures"))
    except (KeyError, TypeError) as e:
        raise SurrogateFormatError(f"{path}: the portfolio table is incomplete ({e!r}).") from e
    if X.ndim != 2 or X.shape[1] != dim or R.shape != (len(tasks), X.shape[0]) or M.shape != (len(tasks), len(names)):
        raise SurrogateFormatError(
            f"{path}: the portfolio table's shapes disagree (configurations {tuple(X.shape)}, regret {tuple(R.shape)}, "
            f"meta-features {tuple(M.shape)}, {len(tasks)} tasks); the file is corrupted."
        )
    return PortfolioTable(X=X, R=R, metafeatures=M, metafeature_names=names, tasks=tasks)


def _load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, path: Path) -> None:
    expected = module.state_dict()
    state = {}
    for name, ref in expected.items():
        t = tensors.get(prefix + name)
        if t is None:
            raise SurrogateFormatError(f"{path} lacks tensor {prefix + name}; the file is incomplete or corrupted.")
        if tuple(t.shape) != tuple(ref.shape):
            raise SurrogateFormatError(
                f"{path}: tensor {prefix + name} has shape {tuple(t.shape)}, expected {tuple(ref.shape)}."
            )
        if not torch.isfinite(t).all():
            raise SurrogateFormatError(f"{path}: tensor {prefix + name} holds NaN or inf; the file is corrupted.")
        state[name] = t
    module.load_state_dict(state)
