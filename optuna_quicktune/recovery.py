"""Faults that lose nothing: our own errors fail the trial with a reason, dead workers' trials are
recovered, and a configuration killed with its worker runs again, once.

Why our own mechanism rather than Optuna's heartbeat: Optuna recovers stale trials only for an
``RDBStorage`` built with ``heartbeat_interval`` (a plain URL, the form users copy, has none) and
never for ``JournalStorage``. Here every QuickTune worker leases the trial it runs (a system
attribute renewed by a daemon thread) and, before each new trial, fails the RUNNING trials whose
lease is dead, on any storage:

* a lease of a worker on *this* machine (same host, boot and PID namespace) is dead as soon as its
  process is gone (checked through ``/proc``, PID reuse included): a ``kill -9`` is seen at once;
* a lease of another machine is dead when it was not renewed for ``grace_period`` seconds (clocks
  of the machines must agree within that margin, as with NTP);
* a RUNNING trial without a lease (its worker died in the instant between creating the trial and
  leasing it) is dead after ``grace_period`` from its start.

The worker that wins the transition to FAIL (decided by the storage: the last ``recovered_by``
written before the first FAIL) enqueues the configuration again with ``quicktune.retry_of``, once:
a retry that dies is not retried again, and a diverged run is never retried (it FAILs or is pruned
by its own worker, never by recovery).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from optuna_quicktune import contract

__all__ = ["Recovery", "recover_stale_trials", "failing_trial", "worker_id", "is_stale"]

_logger = logging.getLogger(__name__)


def worker_id() -> str:
    """This machine and PID namespace: leases of the same id are checked through ``/proc``."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(Path(path).read_text().strip() if "boot_id" in path else str(os.stat(path).st_ino))
        except OSError:
            parts.append("?")
    return "|".join(parts)


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks (tells a reused PID apart); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # a zombie has exited; only its parent has not reaped it yet
        return None
    return fields[19]


def _alive(lease: dict[str, Any]) -> bool:
    pid = lease.get("pid")
    if not isinstance(pid, int):
        return False
    if Path("/proc/self/stat").exists():
        return _process_start(pid) == lease.get("start")
    try:  # no /proc (macOS): existence only
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lease() -> dict[str, Any]:
    pid = os.getpid()
    return {"worker": worker_id(), "pid": pid, "start": _process_start(pid), "beat": time.time()}


def is_stale(trial: FrozenTrial, grace_period: float, *, now: float | None = None, me: str | None = None) -> bool:
    """Whether a RUNNING trial's worker is dead (see the module docstring for the rules)."""
    if trial.state != TrialState.RUNNING:
        return False
    now = time.time() if now is None else now
    lease = trial.system_attrs.get(contract.LEASE)
    if not isinstance(lease, dict):
        started = trial.datetime_start.timestamp() if isinstance(trial.datetime_start, datetime) else now
        return now - started > grace_period
    if lease.get("worker") == (me or worker_id()):
        return not _alive(lease)
    beat = lease.get("beat")
    return not isinstance(beat, (int, float)) or now - float(beat) > grace_period


def recover_stale_trials(study: Study, *, grace_period: float = 120.0, retry: bool = True) -> list[int]:
    """Fail the RUNNING trials of dead workers (``quicktune.fail_reason`` says so); returns their numbers.

    With ``retry``, each recovered configuration that is not itself a retry is enqueued again (a
    WAITING trial with ``quicktune.retry_of``), once, unless another trial already runs it. Safe
    to call from any number of workers at once, and from a process that runs no trial
    (``quicktune recover``).
    """
    me, now = worker_id(), time.time()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(t, grace_period, now=now, me=me):
            continue
        lease = t.system_attrs.get(contract.LEASE)
        who = f"worker {lease.get('worker', '?').split('|')[0]} pid {lease.get('pid')}" if isinstance(lease, dict) else "a worker"
        if _recover(study, t, f"{who} died while running it (recovered by pid {os.getpid()})", retry):
            recovered.append(t.number)
    return recovered


def _recover(study: Study, t: FrozenTrial, reason: str, retry: bool) -> bool:
    """Fail ``t`` and enqueue its retry; True for exactly one of several workers doing it at once.

    The retry is enqueued *before* the FAIL, so a recoverer killed in between loses nothing: the
    next one finds the retry and only fails the trial. Two recoverers racing may both enqueue; the
    storage then decides (the last ``quicktune.recovered_by`` written before the first FAIL) and
    the other cancels its copy while it is still WAITING.
    """
    storage = study._storage  # noqa: SLF001 - Optuna's samplers write trials the same way
    token = f"{worker_id()}|{os.getpid()}|{time.monotonic_ns()}"
    try:
        storage.set_trial_user_attr(t._trial_id, contract.RECOVERED_BY, token)  # noqa: SLF001
        storage.set_trial_user_attr(t._trial_id, contract.FAIL_REASON, reason)  # noqa: SLF001
    except UpdateFinishedTrialError:
        return False  # finished meanwhile: by its worker, or failed by another one
    mine = _enqueue_retry(study, t, token) if retry else None
    try:
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # noqa: SLF001
    except UpdateFinishedTrialError:
        pass
    # The first FAIL fixed the trial; the token it carries is the last one written before it.
    final = storage.get_trial(t._trial_id)  # noqa: SLF001
    won = final.state == TrialState.FAIL and final.user_attrs.get(contract.RECOVERED_BY) == token
    if won:
        _logger.warning("Trial %d of study %r: %s; marked FAIL.", t.number, study.study_name, reason)
    elif mine is not None:
        _cancel(study, mine, f"duplicate retry of trial {t.number} (another worker recovered it)")
    return won


def _enqueue_retry(study: Study, t: FrozenTrial, token: str) -> FrozenTrial | None:
    """Enqueue ``t``'s configuration again unless it is a retry, never chose one, or is held elsewhere."""
    if t.user_attrs.get(contract.RETRY_OF) is not None:
        return None  # once: a retry that died is not run a third time
    params = {**dict(t.system_attrs.get("fixed_params") or {}), **dict(t.system_attrs.get(contract.PARAMS) or {}),
              **dict(t.params)}
    if not params:
        return None  # it died before a configuration was chosen: nothing was lost
    trials = study.get_trials(deepcopy=False)
    if any(o.user_attrs.get(contract.RETRY_OF) == t.number and o.state != TrialState.FAIL for o in trials):
        return None  # a recoverer that died after enqueueing already did it
    parent, cid = t.user_attrs.get(contract.RESUME_OF), t.user_attrs.get(contract.CONFIG_ID)
    others = [o for o in trials if o.number != t.number and o.state != TrialState.FAIL]
    if parent is not None and any(o.user_attrs.get(contract.RESUME_OF) == parent for o in others):
        return None  # another trial continues that paused run
    if parent is None and cid is not None and any(o.user_attrs.get(contract.CONFIG_ID) == cid for o in others):
        return None  # another trial holds the configuration (e.g. it died mid-claim of a resumption)
    attrs: dict[str, Any] = {contract.RETRY_OF: t.number, contract.RECOVERED_BY: token}
    for key in (contract.CONFIG_ID, contract.RESUME_OF, contract.CHECKPOINT):
        if t.user_attrs.get(key) is not None:
            attrs[key] = t.user_attrs[key]
    study.enqueue_trial(params, user_attrs=attrs)
    return next((o for o in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                 if o.user_attrs.get(contract.RECOVERED_BY) == token), None)


def _cancel(study: Study, retry: FrozenTrial, reason: str) -> None:
    storage = study._storage  # noqa: SLF001
    try:
        if storage.get_trial(retry._trial_id).state == TrialState.WAITING:  # noqa: SLF001
            storage.set_trial_user_attr(retry._trial_id, contract.FAIL_REASON, reason)  # noqa: SLF001
            storage.set_trial_state_values(retry._trial_id, TrialState.FAIL)  # noqa: SLF001
    except UpdateFinishedTrialError:
        pass


@contextlib.contextmanager
def failing_trial(study: Study, trial: FrozenTrial, *, finish: bool = True) -> Iterator[None]:
    """Record why our code failed inside a trial (``quicktune.fail_reason``) and, with ``finish``,
    mark it FAIL before the error propagates, so it is never left RUNNING.

    ``finish=False`` where Optuna itself fails the trial (errors raised inside the objective, such
    as the pruner's).
    """
    try:
        yield
    except Exception as e:
        storage = study._storage  # noqa: SLF001
        try:
            storage.set_trial_user_attr(trial._trial_id, contract.FAIL_REASON, f"{type(e).__name__}: {e}")  # noqa: SLF001
            if finish:
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001
        except Exception as inner:  # the storage itself failed: the original error matters more
            _logger.warning("Could not mark trial %d FAIL after %r: %r", trial.number, e, inner)
        raise


@dataclass
class Recovery:
    """How QuickTune workers lease their trials and recover those of dead workers.

    Args:
        heartbeat_interval: Seconds between two renewals of a running trial's lease.
        grace_period: Seconds without renewal after which a worker on another machine is dead
            (default: 4 heartbeats). Workers on the same machine are checked at once.
        retry: Enqueue a recovered configuration again, once.
        enabled: False turns leases and recovery off.
    """

    heartbeat_interval: float = 30.0
    grace_period: float | None = None
    retry: bool = True
    enabled: bool = True
    _beats: dict[int, tuple[threading.Event, threading.Thread]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0:
            raise ValueError(f"heartbeat_interval must be > 0 seconds, got {self.heartbeat_interval}.")
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"grace_period ({self.grace_period}) must exceed heartbeat_interval ({self.heartbeat_interval}), "
                "or every live worker on another machine would look dead."
            )

    @property
    def grace(self) -> float:
        return 4 * self.heartbeat_interval if self.grace_period is None else float(self.grace_period)

    def start(self, study: Study, trial: FrozenTrial) -> None:
        """Lease ``trial`` to this process, then recover the trials of dead workers."""
        if not self.enabled:
            return
        storage = study._storage  # noqa: SLF001
        storage.set_trial_system_attr(trial._trial_id, contract.LEASE, _lease())  # noqa: SLF001
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(study, trial._trial_id, stop), daemon=True,  # noqa: SLF001
                                name=f"quicktune-lease-{trial.number}")
        self._beats[trial._trial_id] = (stop, beat)  # noqa: SLF001
        beat.start()
        recover_stale_trials(study, grace_period=self.grace, retry=self.retry)

    def stop(self, trial: FrozenTrial) -> None:
        """End ``trial``'s lease and wait for its heartbeat thread to finish.

        Waiting matters: a lease thread still alive when the interpreter exits is killed inside
        the runtime, and the process aborted ("terminate called without an active exception",
        exit status 134) after a study that ended with ``study.tell`` (``quicktune perf`` did).
        """
        entry = self._beats.pop(trial._trial_id, None)  # noqa: SLF001
        if entry is None:
            return
        event, beat = entry
        event.set()
        if beat is not threading.current_thread():
            beat.join(timeout=10.0)  # at most one storage write in flight

    def _beat(self, study: Study, trial_id: int, stop: threading.Event) -> None:
        storage = study._storage  # noqa: SLF001
        while not stop.wait(self.heartbeat_interval):
            try:
                storage.set_trial_system_attr(trial_id, contract.LEASE, _lease())
            except UpdateFinishedTrialError:
                return
            except Exception as e:  # a busy database: the next beat tries again
                _logger.debug("Lease renewal of trial id %d failed: %r", trial_id, e)
