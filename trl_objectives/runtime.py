"""What a long-running command (``quicktune collect``, ``quicktune demo``) sets up around its trials.

Why a module of its own: both commands need the same things, and neither should borrow the
other's private helpers: a storage that survives killed workers and shared SQLite files, quiet
libraries, so that their own progress bar stays readable, and a stop on SIGTERM that records the
run in flight.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["open_storage", "quiet_libraries", "sigterm_as_interrupt"]


def open_storage(url: str, *, heartbeat: bool = True, grace_period: int = 120) -> Any:
    """An ``RDBStorage`` with a heartbeat (so a killed worker's trials can be failed and re-run).

    SQLite gets a 60 s lock timeout, so several collection processes can share one file.
    """
    import optuna

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {"heartbeat_interval": min(30, grace_period), "grace_period": grace_period} if heartbeat else {}
    # Two processes started together on a new database both create its schema; the loser gets an
    # integrity or lock error from the schema's version table. The schema then exists: open again.
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (IntegrityError, OperationalError):
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def quiet_libraries() -> None:
    """Silence per-trial library chatter (Optuna, transformers, datasets) for a command's own progress bar."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # transformers' own deprecation notices (e.g. is_gradient_checkpointing) are not the user's to act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers(\.|$)")
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    logging.getLogger("trl_objectives.objective").setLevel(logging.ERROR)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler, a container stop) stops the collection as Ctrl-C does.

    Why: Python's default for SIGTERM ends the process at once, leaving the run in flight RUNNING
    until its heartbeat expires; as a ``KeyboardInterrupt`` Optuna records it FAIL (with no
    ``quicktune.fail_reason``, so the next ``collect`` runs that configuration again). A process
    started in the background of a script ignores SIGINT, so SIGTERM is how it is stopped.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
