"""Checkpoints of paused LoRA SFT runs: safetensors and JSON only, never pickle.

Why a module of its own: a paused trial (``QuickTunePruner`` said stop) must be resumable later, on
another worker, from exactly where it stopped; a checkpoint therefore carries the adapter, the
optimizer and scheduler state, the RNG states and the trainer state.  Loading one must never run
code, so nested state dicts are split into a JSON tree and a flat tensor dict for safetensors
(``torch.save`` would pickle).  Used by :mod:`trl_objectives.callbacks` (save on pause, restore on
resume) and :class:`~trl_objectives.SFTObjective` (check the checkpoint a continuation names).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from optuna_quicktune import contract
from trl_objectives.errors import TRLObjectiveInputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "CHECKPOINT_META",
    "CHECKPOINT_FORMAT",
    "checkpoint_folder",
    "save_checkpoint",
    "load_checkpoint_meta",
    "load_training_state",
    "rng_state",
    "restore_rng",
    "resume_folder",
]

#: Name of the JSON file that describes a checkpoint folder.
CHECKPOINT_META = "quicktune_checkpoint.json"
#: Layout version written into :data:`CHECKPOINT_META`; a checkpoint of another version is refused.
CHECKPOINT_FORMAT = 1


def checkpoint_folder(root: Path, trial: optuna.Trial) -> Path:
    """``<root>/<study>/trial-<n>``: one folder per paused trial, the study name made path-safe."""
    study = re.sub(r"[^A-Za-z0-9_.-]+", "_", trial.study.study_name) or "study"
    return (root / study / f"trial-{trial.number}").resolve()


def save_checkpoint(
    folder: str | os.PathLike[str],
    *,
    model: Any,
    optimizer: Any,
    lr_scheduler: Any,
    state: Any,
    meta: Mapping[str, Any],
) -> Path:
    """Save everything needed to continue a LoRA SFT run, as safetensors and JSON only.

    Layout: the PEFT adapter (``adapter_model.safetensors`` + ``adapter_config.json``),
    ``optimizer.safetensors``/``optimizer.json``, ``scheduler.json``, ``rng.safetensors``/``rng.json``,
    ``trainer_state.json`` (transformers' own JSON) and :data:`CHECKPOINT_META`.  Nothing is pickled,
    so loading it can never run code.  Written into a temporary folder and renamed into place.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        opt_tree, opt_tensors = _to_json_and_tensors(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(opt_tree))
        sched_tree, sched_tensors = _to_json_and_tensors(lr_scheduler.state_dict())
        if sched_tensors:
            save_file(sched_tensors, str(tmp / "scheduler.safetensors"))
        (tmp / "scheduler.json").write_text(json.dumps(sched_tree))
        rng_tree, rng_tensors = _to_json_and_tensors(rng_state())
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        (tmp / "rng.json").write_text(json.dumps(rng_tree))
        state.save_to_json(str(tmp / "trainer_state.json"))
        (tmp / CHECKPOINT_META).write_text(json.dumps({"format": CHECKPOINT_FORMAT, **meta}, indent=1, default=str))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_checkpoint_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The :data:`CHECKPOINT_META` of a checkpoint folder, after checking the folder is complete."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TRLObjectiveInputError(
            f"Checkpoint folder {folder} does not exist (was it deleted, or saved on another machine?). "
            "Resume only from checkpoints this objective wrote."
        )
    needed = [CHECKPOINT_META, "adapter_model.safetensors", "adapter_config.json", "optimizer.json",
              "optimizer.safetensors", "scheduler.json", "trainer_state.json", "rng.json", "rng.safetensors"]
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise TRLObjectiveInputError(f"Checkpoint folder {folder} is incomplete: it lacks {missing}.")
    meta = json.loads((folder / CHECKPOINT_META).read_text())
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise TRLObjectiveInputError(
            f"Checkpoint {folder} has format {meta.get('format')!r}; this version reads format {CHECKPOINT_FORMAT}."
        )
    return meta


def load_training_state(folder: Path, optimizer: Any, lr_scheduler: Any) -> None:
    """Load the optimizer and scheduler state right after the trainer created them (resume)."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "optimizer.safetensors"))
    opt_state = _from_json_and_tensors(json.loads((folder / "optimizer.json").read_text()), tensors)
    opt_state["state"] = {int(k): v for k, v in opt_state["state"].items()}
    optimizer.load_state_dict(opt_state)
    sched_tensors = load_file(str(folder / "scheduler.safetensors")) if (folder / "scheduler.safetensors").exists() else {}
    lr_scheduler.load_state_dict(_from_json_and_tensors(json.loads((folder / "scheduler.json").read_text()), sched_tensors))


def rng_state() -> dict[str, Any]:
    """Every RNG state training uses (Python, NumPy, torch CPU and CUDA), as tensors and plain values."""
    import torch

    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"name": np_state[0], "keys": np_state[1].tolist(), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "cpu": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(folder: Path) -> None:
    """Restore Python, NumPy and torch RNG states, so a resumed run draws what the whole run would have."""
    import torch
    from safetensors.torch import load_file

    state = _from_json_and_tensors(json.loads((folder / "rng.json").read_text()), load_file(str(folder / "rng.safetensors")))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], np.asarray(npst["keys"], dtype=np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_json_and_tensors(obj: Any) -> tuple[Any, dict[str, "torch.Tensor"]]:
    """Split a nested state dict into a JSON tree and a flat ``{key: tensor}`` dict for safetensors."""
    import torch

    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = x.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(x, Mapping):
            return {"__dict__": [[walk(k), walk(v)] for k, v in x.items()]}
        if isinstance(x, tuple):
            return {"__tuple__": [walk(v) for v in x]}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if x is None or isinstance(x, (bool, int, str)):
            return x
        if isinstance(x, float):
            return x if math.isfinite(x) else {"__float__": repr(x)}
        if isinstance(x, (np.integer, np.floating, np.bool_)):
            return walk(x.item())
        if callable(x) and not isinstance(x, type):
            return {"__callable__": getattr(x, "__qualname__", type(x).__name__)}
        raise TypeError(
            f"Cannot checkpoint a {type(x).__name__} without pickling it; only tensors, numbers, strings, "
            "lists and dicts are saved."
        )

    return walk(obj), tensors


def _from_json_and_tensors(tree: Any, tensors: Mapping[str, "torch.Tensor"]) -> Any:
    def walk(x: Any) -> Any:
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, dict):
            if "__tensor__" in x:
                return tensors[x["__tensor__"]]
            if "__dict__" in x:
                return {walk(k): walk(v) for k, v in x["__dict__"]}
            if "__tuple__" in x:
                return tuple(walk(v) for v in x["__tuple__"])
            if "__float__" in x:
                return float(x["__float__"])
            if "__callable__" in x:
                return None
            return {k: walk(v) for k, v in x.items()}
        return x

    return walk(tree)




def resume_folder(trial: optuna.Trial, config_id: str, *, fidelity_unit: str, fidelity_max: int) -> Path | None:
    """The checkpoint a continuation trial resumes from, checked against the trial; ``None`` for a new run.

    A continuation (``quicktune.resume_of`` set, as the QuickTune sampler enqueues it) must name
    the parent's checkpoint, for the same configuration and fidelity unit, not already at the end.

    Raises:
        TRLObjectiveInputError: what is wrong with the continuation, and how to enqueue it.
    """
    attrs = trial.user_attrs
    parent = attrs.get(contract.RESUME_OF)
    if parent is None:
        return None
    path = attrs.get(contract.CHECKPOINT)
    if not path:
        raise TRLObjectiveInputError(
            f"Trial {trial.number} resumes trial {parent} but has no {contract.CHECKPOINT!r} user "
            "attribute; enqueue it with user_attrs={resume_of: n, checkpoint: <the parent's checkpoint>}."
        )
    folder = Path(path)
    meta = load_checkpoint_meta(folder)
    if meta.get("config_id") != config_id:
        raise TRLObjectiveInputError(
            f"Checkpoint {folder} was saved for configuration {meta.get('params')} but trial "
            f"{trial.number} has {dict(trial.params)}; enqueue the continuation with the parent's params."
        )
    if int(meta["step"]) >= fidelity_max:
        raise TRLObjectiveInputError(
            f"Checkpoint {folder} is at {fidelity_unit} {meta['step']}, the last one "
            f"({fidelity_max}); there is nothing to resume."
        )
    if meta.get("fidelity_unit") != fidelity_unit:
        raise TRLObjectiveInputError(
            f"Checkpoint {folder} counts {meta.get('fidelity_unit')}s but this objective counts {fidelity_unit}s."
        )
    return folder
