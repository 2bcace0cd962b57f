"""QuickTunePruner: stop (or pause) a run when its next step is worth less than the best alternative.

At each rung (reported steps 1, 2, 3, 4, 6, 8, 12, ...; see ``rungs``) the pruner asks the sampler's surrogates for the cost-aware expected
improvement of continuing this trial one more step, and compares it with the best other action the
study could take instead (a new configuration or a paused one). The trial is pruned when

    score(continue) * (1 + margin) < score(best alternative)

and at least ``min_steps`` fidelities were reported. With ``keep_leader`` a run whose score at
its current fidelity is at least every other run's score there (or at that run's last fidelity, if
it stopped earlier) is never stopped, as in successive halving, where the top of each rung is
promoted. If the objective saves a checkpoint before
raising ``TrialPruned`` (``quicktune.checkpoint``), the sampler marks the trial
``quicktune.paused`` and may resume it later: pruning becomes freeze-thaw.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.study import Study
from optuna.trial import FrozenTrial

from optuna_quicktune import chains
from optuna_quicktune.recovery import failing_trial
from optuna_quicktune.sampler import QuickTuneSampler

__all__ = ["QuickTunePruner", "is_rung"]


def is_rung(step: int, growth: float = 1.5) -> bool:
    """Whether ``step`` (reports so far) is a decision point: a ceiling of ``growth ** k``."""
    if step < 1:
        return False
    k, r = 0, 1.0
    while math.ceil(r) < step:
        k += 1
        r = growth**k
    return math.ceil(r) == step


class QuickTunePruner(BasePruner):
    """Cost-aware grey-box stopping with the same surrogates as :class:`QuickTuneSampler`.

    Args:
        sampler: The study's sampler; its surrogates, pool and settings are reused.
        margin: Relative advantage the alternative must have before this trial is stopped; a larger
            margin stops fewer runs.
        min_steps: Fidelities a trial (chain) must have reported before it can be stopped.
        n_startup_trials: Trials that must have finished (``COMPLETE``) before any trial is stopped.
            Set it to 1 where the caller needs a best trial, e.g. ``Trainer.hyperparameter_search``,
            which reads ``study.best_trial`` and cannot resume a paused run. The default 0 trusts
            the transfer prior from the first run on.
        keep_leader: Never stop a run that leads at its fidelity: its score there is at least every
            other run's score at that fidelity, or at the other run's last fidelity if it stopped
            earlier; the study's first run leads by definition (there is no evidence against it,
            only the transfer prior, and under the defaults it is the portfolio's first member). Why: when the
            zero-shot surrogate is wrong about a task, fresh candidates keep a high uncertainty
            at the final fidelity, win the comparison, and every run is stopped after one or two
            steps, so the budget goes into low-fidelity exploration and no run finishes. The
            leader's curve is the evidence the prior lacks. On LCBench (24 tasks x 5 seeds) it lowered
            QuickTune's mean regret at every budget fraction (docs/benchmarks.md); ``False`` gives
            the pure cost-benefit rule.
        stop_diverged: Stop a run at the first NaN or +-inf it reports (no checkpoint is resumed
            and recovery never retries it). Why by default: a diverged curve gives the surrogate
            nothing to rank, so the cost-benefit rule would let it train to the end.
        keep_portfolio: Protect the runs of the sampler's portfolio members (its
            ``portfolio_first`` phase) while the surrogate expects them to improve on the study's
            best run (see ``portfolio_hurdle``). The static portfolio runs its members to the end;
            stopping one for an alternative the zero-shot surrogate prefers is the judgement the
            portfolio phase exists to avoid, so QuickTune's start is the portfolio's.
            Diverged runs are still stopped (``stop_diverged``).
        portfolio_hurdle: How sure the surrogate must be that a portfolio member ends below the
            best score so far before the member loses its protection: it is protected while
            ``mean + portfolio_hurdle * std`` of its predicted final score (given its curve so far)
            is at least the study's best score at the highest fidelity reached. The default 1.645
            is the upper end of the surrogate's 90 % predictive interval (the interval whose
            coverage ``meta_train`` calibrates and the held-out checks report): a member runs on,
            as in the static portfolio, until the best run so far lies above that interval; then
            it is judged like any other run. ``None`` runs every member to its end; 0 (the median)
            was better on LCBench but stopped members that would have won on the LLM table with
            4-point curves, where QuickTune then ended worse than the static portfolio
            (docs/benchmarks.md, stop 13).
        rungs: ``"geometric"`` decides at the reported steps 1, 2, 3, 4, 6, 8, 12, 18, 26, 39, ...
            (each about 1.5 x the previous, as the rungs of successive halving grow
            geometrically): what a curve tells about its end grows with the log of its length,
            and a decision costs a storage read and a surrogate call, so deciding at every one
            of 50 epochs spends most of QuickTune's overhead on steps that add little.
            ``"every"`` decides at every report (Quick-Tune).
    """

    def __init__(
        self,
        sampler: QuickTuneSampler,
        *,
        margin: float = 0.1,
        min_steps: int = 1,
        n_startup_trials: int = 0,
        keep_leader: bool = True,
        stop_diverged: bool = True,
        rungs: str = "geometric",
        keep_portfolio: bool = True,
        portfolio_hurdle: float | None = 1.645,
    ) -> None:
        if not isinstance(sampler, QuickTuneSampler):
            raise TypeError("QuickTunePruner needs the study's QuickTuneSampler: QuickTunePruner(sampler).")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}.")
        if min_steps < 1:
            raise ValueError(f"min_steps must be >= 1, got {min_steps}.")
        if n_startup_trials < 0:
            raise ValueError(f"n_startup_trials must be >= 0, got {n_startup_trials}.")
        self.sampler = sampler
        self.n_startup_trials = int(n_startup_trials)
        self.margin = float(margin)
        self.min_steps = int(min_steps)
        self.keep_leader = bool(keep_leader)
        self.stop_diverged = bool(stop_diverged)
        if rungs not in ("geometric", "every"):
            raise ValueError(f"rungs must be 'geometric' or 'every', not {rungs!r}.")
        self.rungs = rungs
        self.keep_portfolio = bool(keep_portfolio)
        if portfolio_hurdle is not None and not math.isfinite(portfolio_hurdle):
            raise ValueError(f"portfolio_hurdle must be a finite number or None, got {portfolio_hurdle}.")
        self.portfolio_hurdle = None if portfolio_hurdle is None else float(portfolio_hurdle)

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        if self.stop_diverged and chains.diverged(list(trial.intermediate_values.values())):
            return True  # NaN or +-inf: stopped at the step it appears (no surrogate can rank it)
        with failing_trial(study, trial, finish=False):  # Optuna fails it; we say why
            return self._prune(study, trial)

    def _prune(self, study: Study, trial: FrozenTrial) -> bool:
        if not trial.intermediate_values:
            return False
        if self.rungs == "geometric" and not is_rung(int(trial.last_step or 0)):
            return False  # decided before any storage read or prediction
        decision = self.sampler.decision(study)  # built once: the same object the sampler decides with
        state = decision.state
        if self.n_startup_trials and sum(
            v.state == optuna.trial.TrialState.COMPLETE for v in state.trials.values()
        ) < self.n_startup_trials:
            return False
        view = state.trials.get(trial.number)
        chains.warn_beyond(trial, decision.fidelity_max)  # such steps are ignored (the prefix stops at max)
        reached = len(view.prefix) if view is not None else 0
        if reached < self.min_steps or reached >= decision.fidelity_max:
            return False
        if self.keep_leader and view is not None and (
            state.leads(view.number, reached, decision.sign) or not state.has_other_runs(view.number)
        ):
            return False  # the best curve so far, or the only one: no evidence yet against it
        if self.keep_portfolio and view is not None and view.config_id in decision.portfolio_order:
            if self.portfolio_hurdle is None:
                return False  # a portfolio member runs to its end, as in the static portfolio
            est = decision.final_estimate(view.number)
            inc = state.incumbent(decision.fidelity_max)
            if est is None or not np.isfinite(inc) or est[0] + self.portfolio_hurdle * est[1] >= inc:
                return False  # expected to beat the best run so far: finishing it pays, as in the portfolio
        mine = decision.continuation(trial.number)
        if mine is None:
            return False
        alternatives = decision.actions(exclude=trial.number, limit=1)
        if not alternatives:
            return False
        best = alternatives[0].score
        stop = mine.score * (1.0 + self.margin) < best
        if stop:
            optuna.logging.get_logger(__name__).info(
                f"Trial {trial.number}: stop at fidelity {reached} (continue={mine.score:.4g} < "
                f"{alternatives[0].kind} {alternatives[0].config_id}={best:.4g})."
            )
        return stop
