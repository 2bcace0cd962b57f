"""Surrogates shipped with the package, loadable by name, and ``load_surrogate`` for any folder."""

from __future__ import annotations

from pathlib import Path

from optuna_quicktune.errors import SurrogateFormatError
from optuna_quicktune.surrogate.model import QuickTuneSurrogate
from optuna_quicktune.surrogate.persistence import CONFIG_FILE, load

__all__ = ["load_surrogate", "available"]

_HERE = Path(__file__).parent


def available() -> list[str]:
    """Names of the packaged surrogates (folders next to this file with a saved surrogate)."""
    return sorted(p.name for p in _HERE.iterdir() if (p / CONFIG_FILE).is_file())


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
        f"Packaged names: {available() or 'none'}. Save one with QuickTuneSurrogate.save(dir) or "
        "`quicktune meta-train --storage URL --out DIR`."
    )
