"""The surrogate a study's decisions use: the pretrained one, conditioned on the study (and refit).

Three caches, cleared together by :meth:`SurrogateViews.clear` (as Optuna's GP sampler keeps its
kernel and acquisition caches): the refit copies per (study, version), the rescaled views of a
surrogate meta-trained on per-task scores (:mod:`.surrogate.task_scale`) per (study, version), and
the latest two conditioned views. A view is what :meth:`QuickTuneSurrogate.conditioned_on` returns; the next view
extends the latest one whose conditioning points are a subset of the new ones, so each finished
trial costs one Schur-complement extension, never a refactorisation.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np
from optuna.trial import TrialState

from optuna_quicktune.metadataset import MetaDataset, Run, Task
from optuna_quicktune.study_state import StudyState
from optuna_quicktune.surrogate.model import QuickTuneSurrogate
from optuna_quicktune.surrogate.task_scale import estimate_scale

__all__ = ["SurrogateViews"]


class SurrogateViews:
    """Refit copies and conditioned views of one pretrained surrogate."""

    def __init__(self, surrogate: QuickTuneSurrogate, keep: int = 2) -> None:
        self.surrogate = surrogate
        self.keep = int(keep)
        self._refit: dict[tuple[str, int], QuickTuneSurrogate] = {}
        self._views: OrderedDict[Any, QuickTuneSurrogate] = OrderedDict()
        self._scaled: OrderedDict[Any, QuickTuneSurrogate] = OrderedDict()

    def clear(self) -> None:
        self._refit.clear()
        self._views.clear()
        self._scaled.clear()

    def rescaled(
        self, base: QuickTuneSurrogate, study_name: str, state: StudyState, mf: dict[str, float] | None,
        fmax: int, sign: float,
    ) -> QuickTuneSurrogate:
        """``base`` reading the study's scores in the per-task units it was meta-trained in.

        ``base`` itself when it was meta-trained on scores normalised over all tasks. Otherwise the
        task's scale is estimated (:func:`~.surrogate.task_scale.estimate_scale`) from the first
        ``2^k`` finished trials (by number), ``k`` growing as their count doubles: every worker
        derives the same map from the storage, and a study re-conditions ``O(log n)`` times.
        """
        prior = None if base.scale_id else base.task_scale
        if prior is None or not state.ends:
            return base  # before any finished run: the prior's map, with its uncertainty in the std
        version = int(math.floor(math.log2(len(state.ends)))) + 1
        key = (base.view_id, study_name, fmax, sign, tuple(sorted((mf or {}).items())), version)
        if key not in self._scaled:
            used = sorted(state.ends, key=lambda v: v.number)[: 2 ** (version - 1)]
            lengths = np.array([min(len(v.prefix), fmax) for v in used])
            y = np.array([v.prefix[b - 1] for v, b in zip(used, lengths)])
            m0, s0 = prior.mode
            # Zero-shot predictions at the prior's map, without its widening, back in standardised units.
            mu, sd = base.rescaled(m0, s0).predict(np.stack([v.x for v in used]), None, lengths, fidelity_max=fmax,
                                                   metafeatures=mf, sign=sign)
            level, scale = estimate_scale(prior, sign * y, (sign * mu - m0) / s0, sd / s0)
            self._scaled[key] = base.rescaled(level, scale)
        self._scaled.move_to_end(key)
        while len(self._scaled) > self.keep:
            self._scaled.popitem(last=False)
        return self._scaled[key]

    def refit(
        self, study_name: str, state: StudyState, mf: dict[str, float] | None, fmax: int, sign: float,
        every: int, steps: int, seed: int, keep_context: bool,
    ) -> QuickTuneSurrogate:
        """A copy fine-tuned on the study (Quick-Tune), or the pretrained surrogate before ``every`` trials.

        Fine-tuned after ``every`` finished trials, then each time their number doubles: each
        fine-tuning sees at least twice the data of the previous one, and a long study pays for
        ``O(log n)`` fine-tunings, not ``O(n)``. Conditioning keeps the copy current between them.
        """
        finished = sum(1 for v in state.trials.values() if v.state in (TrialState.COMPLETE, TrialState.PRUNED))
        version = 0 if finished < every else int(math.floor(math.log2(finished / every))) + 1
        if version == 0:
            return self.surrogate
        key = (study_name, version)
        if key not in self._refit:
            from optuna_quicktune.surrogate.training import fine_tune

            md = _study_metadataset(study_name, state, self.surrogate.space, mf, fmax, sign)
            tuned = fine_tune(self.surrogate, md, steps=steps, seed=seed + version)
            if keep_context:
                # Condition like the zero-shot view (meta context + finished runs) rather than on
                # fine_tune's sample of the study.
                ctx = self.surrogate.performance
                assert ctx.context is not None and ctx.context_y is not None
                tuned.performance.set_context(ctx.context, ctx.context_y)
            self._refit[key] = tuned
        return self._refit[key]

    def conditioned(
        self, base: QuickTuneSurrogate, study_name: str, state: StudyState, mf: dict[str, float] | None,
        fmax: int, sign: float,
    ) -> QuickTuneSurrogate:
        """``base`` conditioned on the last score of every finished trial.

        A paused trial that was resumed keeps its point (a real observation at its fidelity) and
        its continuation adds another, so the set only grows: a new view extends the previous one
        by the trials that ended since, at ``O(n^2 m)``. Running trials are left out, so the view
        changes only when a trial ends.
        """
        ends = state.ends
        if not ends:
            return base
        common = (base.view_id, study_name, fmax, sign, tuple(sorted((mf or {}).items())))
        points = state.end_points
        key = (common, points)
        if key not in self._views:
            # Extend the latest view whose points are a subset of these; else condition the base.
            have, view = frozenset(), base
            for (c, p), v in reversed(self._views.items()):
                if c == common and p <= points:
                    have, view = p, v
                    break
            new = [v for v in ends if (v.number, len(v.prefix)) not in have]
            lengths = np.array([min(len(v.prefix), fmax) for v in new])
            y = np.array([v.prefix[b - 1] for v, b in zip(new, lengths)])
            X = np.stack([v.x for v in new])
            self._views[key] = view.conditioned_on(X, lengths, y, fidelity_max=fmax, metafeatures=mf, sign=sign)
        self._views.move_to_end(key)
        while len(self._views) > self.keep:
            self._views.popitem(last=False)
        return self._views[key]


def _study_metadataset(
    study_name: str, state: StudyState, space: Any, mf: dict[str, float] | None, fmax: int, sign: float
) -> MetaDataset:
    task = Task(
        name=study_name, dataset=study_name, model="", metric="value",
        direction="maximize" if sign > 0 else "minimize", fidelity_unit="step", fidelity_max=fmax,
        metafeatures=dict(mf or {}),
    )
    runs = [
        Run(task=0, config=dict(v.params), curve=v.prefix[:fmax], cost=np.full(min(len(v.prefix), fmax), np.nan))
        for v in state.trials.values()
        if not v.continued and len(v.prefix) > 0 and space.contains(v.params)
    ]
    return MetaDataset(space, [task], runs)
