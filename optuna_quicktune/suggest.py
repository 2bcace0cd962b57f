"""``quicktune suggest``: what to run first on a new dataset, before anything is trained.

A user's first question is "which configurations should I try on this data?". The answer is what
QuickTune itself would run first: the members of the meta-dataset's greedy portfolio it starts
with, then the surrogate's zero-shot ranking for the dataset's meta-features, which is exactly what
:meth:`QuickTuneSampler.enqueue_portfolio` computes for a study. This module asks it on a study
(an in-memory one when nothing is to be kept, the user's study with ``--enqueue``), so a printed
suggestion and the trial a later ``study.optimize`` runs first are the same configuration with the
same prediction. Nothing is trained; the only model work is tokenizing the dataset for its
meta-features (the tokenizer of the model the surrogate was meta-trained on, or ``--model``).

Example::

    quicktune suggest my_qa.jsonl --surrogate smollm2-135m-factqa -k 5
    quicktune suggest my_qa.jsonl -k 8 --enqueue sqlite:///tune.db --study my-qa
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

from optuna_quicktune import contract
from optuna_quicktune.errors import SurrogateFormatError
from optuna_quicktune.pretrained import catalog, load_surrogate, model_of, pick
from optuna_quicktune.surrogate.model import QuickTuneSurrogate

__all__ = [
    "Suggestion",
    "suggest",
    "surrogate_model",
    "surrogate_direction",
    "dataset_metafeatures",
    "format_suggestions",
    "add_suggest_parser",
]


@dataclass(frozen=True)
class Suggestion:
    """One suggested configuration and what the surrogate expects of it.

    Attributes:
        rank: 1 for the configuration to run first.
        params: The configuration (the surrogate's search space).
        config_id: Its id in the storage contract (``quicktune.config_id``).
        mean, std: Predicted final score (metric units) and its standard deviation.
        cost: Predicted cost of the full run (all ``fidelity`` steps), in the unit of the
            meta-dataset's costs (seconds on the hardware it was collected on, see its data card).
        fidelity: Steps of the full run the prediction is for.
        source: ``"portfolio"``: a member of the meta-dataset's greedy portfolio, which
            ``QuickTuneSampler`` starts first (its worst case is the static portfolio's);
            ``"surrogate"``: one of the best predicted final scores for this dataset.
    """

    rank: int
    params: dict[str, Any]
    config_id: str
    mean: float
    std: float
    cost: float
    fidelity: int
    source: str = "surrogate"


def surrogate_model(surrogate: QuickTuneSurrogate) -> str | None:
    """The model spec the surrogate's meta-dataset was collected with, or ``None`` if unknown.

    Meta-features use the tuned model's tokenizer, so a dataset must be described with it.
    """
    return model_of(surrogate.info)


def surrogate_direction(surrogate: QuickTuneSurrogate) -> str | None:
    """``"minimize"``/``"maximize"`` for the surrogate's metric, or ``None`` if it does not say.

    A surrogate predicts scores in its metric's own direction; ranking them the other way round
    would put the worst configuration first, so an unknown direction is an error upstream.
    """
    direction = surrogate.info.get("direction")
    if direction in ("minimize", "maximize"):
        return str(direction)
    metric = (surrogate.info.get("collect") or {}).get("metric")
    if not metric:
        return None
    try:
        from trl_objectives.evaluate import metric_direction
    except ImportError:  # pragma: no cover - needs the [trl] extra
        return None
    try:
        return metric_direction(str(metric))
    except ValueError:
        return None


def dataset_metafeatures(
    path: str | Path,
    model: str,
    *,
    question_field: str = "question",
    answer_field: str = "answer",
    seed: int = 0,
) -> dict[str, float]:
    """The meta-features of a QA dataset file, as ``SFTObjective`` would write them for a study.

    Split and tokenized the same way a trial sees the data (``trl_objectives.load_qa_dataset``,
    the model's tokenizer), so the surrogate gets the description it was meta-trained with.
    """
    from trl_objectives.data import load_qa_dataset
    from trl_objectives.metafeatures import compute_metafeatures
    from trl_objectives.models import load_tokenizer

    qa = load_qa_dataset(str(path), question_field=question_field, answer_field=answer_field, seed=seed)
    return compute_metafeatures(qa, load_tokenizer(model), seed=seed)


def suggest(
    surrogate: QuickTuneSurrogate | str,
    metafeatures: Mapping[str, float] | None,
    *,
    k: int = 5,
    fidelity_max: int | None = None,
    direction: str | None = None,
    n_candidates: int = 1000,
    seed: int = 0,
    study: optuna.Study | None = None,
    portfolio_first: int = 5,
) -> list[Suggestion]:
    """The ``k`` configurations QuickTune would start first on a dataset, in that order.

    Args:
        surrogate: A surrogate, a saved folder or a packaged name.
        metafeatures: The dataset's meta-features (``None`` only for a surrogate without any).
        k: How many configurations.
        fidelity_max: Steps of a full run; default the surrogate's longest curve.
        direction: The metric's direction; default the one the surrogate records.
        n_candidates: Random configurations scored besides the meta-dataset's own.
        seed: Seed of that candidate pool (the same seed gives the same suggestions).
        study: Enqueue the suggestions there as WAITING trials (skipping configurations it
            already ran or holds); default an in-memory study, i.e. nothing is stored.
        portfolio_first: The portfolio members that come first (``QuickTuneSampler``'s setting of
            the same name, whose default this is); ``0``: the surrogate's ranking alone.

    Raises:
        ValueError: ``k < 1``, no direction known, or a study whose direction or stored
            meta-features contradict these.
        MetaFeatureError: meta-features missing or not the surrogate's names.
    """
    import warnings

    from optuna_quicktune.sampler import QuickTuneSampler

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    s = load_surrogate(surrogate) if isinstance(surrogate, (str, Path)) else surrogate
    direction = direction or surrogate_direction(s)
    if direction not in ("minimize", "maximize"):
        raise ValueError(
            "The surrogate does not record its metric's direction; pass direction='minimize' or "
            "'maximize' (--direction)."
        )
    mf = None if metafeatures is None else {str(a): float(b) for a, b in metafeatures.items()}
    if mf is not None:
        s.prep.metafeatures(mf)  # fail now, naming missing or unknown names
    if study is None:  # a scratch study: no "study created in memory" line for the user to wonder about
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.create_study(direction=direction, study_name="quicktune-suggest")
        finally:
            optuna.logging.set_verbosity(verbosity)
    else:
        _check_study(study, direction, mf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # horizon="final": enqueue_portfolio's recorded cost is then that of the whole run.
        sampler = QuickTuneSampler(s, metafeatures=mf, fidelity_max=fidelity_max, n_candidates=n_candidates,
                                   horizon="final", seed=seed, portfolio_first=portfolio_first)
    before = {t.number for t in study.get_trials(deepcopy=False)}
    chosen = sampler.enqueue_portfolio(study, k=k)
    # Its WAITING trials, in the order enqueued, carry the predictions it made.
    new = sorted((t for t in study.get_trials(deepcopy=False) if t.number not in before), key=lambda t: t.number)
    out = []
    for rank, (params, t) in enumerate(zip(chosen, new), start=1):
        pred = t.user_attrs[contract.PREDICTED]
        out.append(Suggestion(rank, dict(params), str(t.user_attrs[contract.CONFIG_ID]), float(pred["mean"]),
                              float(pred["std"]), float(pred["cost"]), int(pred["fidelity"]), str(pred["source"])))
    return out


def _check_study(study: optuna.Study, direction: str, mf: dict[str, float] | None) -> None:
    """Refuse a study that describes another task; give one that describes none our meta-features.

    The meta-features are stored (when absent) so that a later ``QuickTuneSampler`` on the study
    ranks with the same description; the task attribute is left to the objective, which names it.
    """
    ours = "maximize" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
    if ours != direction:
        raise ValueError(
            f"Study {study.study_name!r} is set to {ours} but the surrogate's metric must be {direction}d; "
            "use another study name (or a surrogate meta-trained on your metric)."
        )
    stored = contract.read_metafeatures(study)
    if stored is not None and mf is not None:
        diff = sorted(n for n in set(stored) | set(mf)
                      if not math.isclose(stored.get(n, math.nan), mf.get(n, math.nan), rel_tol=1e-6, abs_tol=1e-9))
        if diff:
            raise ValueError(
                f"Study {study.study_name!r} already holds other meta-features (differing: {diff[:5]}"
                f"{'...' if len(diff) > 5 else ''}): it describes another dataset. Use a new study name."
            )
    elif stored is None and mf is not None:
        study.set_user_attr(contract.METAFEATURES, mf)


def format_suggestions(suggestions: Sequence[Suggestion], *, metric: str = "score", unit: str = "step") -> str:
    """A table a person reads: rank, predicted score +- std, predicted cost, then the configuration.

    ``unit`` names the fidelity (``"epoch"`` for the packaged LLM surrogates), so the footer says
    how long a run the predictions are for.
    """
    if not suggestions:
        return "No configuration left to suggest (the study already holds every candidate)."
    names = list(suggestions[0].params)
    head = ["rank", f"predicted {metric}", "std", "cost", "source", *names]
    rows = [[str(x.rank), f"{x.mean:.4g}", f"{x.std:.3g}", f"{x.cost:.4g}", x.source,
             *(_fmt(x.params.get(n)) for n in names)]
            for x in suggestions]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [head, *rows]]
    fid = suggestions[0].fidelity
    lines.append(f"(predicted at the end of a {fid}-{unit} run; cost: predicted seconds of the whole run on the "
                 "hardware the surrogate's meta-dataset was collected on; source: portfolio = a member of the "
                 "meta-dataset's best-on-average portfolio, which QuickTune runs first, surrogate = the best predicted "
                 "for this dataset)")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ------------------------------------------------------------------------------------------ CLI
def add_suggest_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``quicktune suggest`` to the ``quicktune`` command's subparsers."""
    p = subparsers.add_parser(
        "suggest",
        help="Print the top-k configurations for a dataset (predicted score, uncertainty, cost); train nothing.",
        description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("dataset", nargs="?", default=None,
                   help="QA dataset file (.jsonl/.json/.csv/.tsv); or give --metafeatures")
    p.add_argument("--metafeatures", default=None, help="JSON file (or inline JSON) of the dataset's meta-features")
    p.add_argument("--surrogate", default=None,
                   help=f"packaged name ({', '.join(f'{k}: {v}' for k, v in catalog().items()) or 'none'}) or saved folder; "
                        "default the packaged one for --model's family")
    p.add_argument("--model", default=None,
                   help="model whose tokenizer describes the dataset; default the surrogate's model")
    p.add_argument("-k", "--top", type=int, default=5, dest="k", help="how many configurations")
    p.add_argument("--fidelity", type=int, default=None, help="steps of a full run (default: the surrogate's)")
    p.add_argument("--direction", choices=["minimize", "maximize"], default=None,
                   help="metric direction, when the surrogate does not record it")
    p.add_argument("--question-field", default="question")
    p.add_argument("--answer-field", default="answer")
    p.add_argument("--candidates", type=int, default=1000, help="random configurations scored besides the meta-dataset's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--portfolio-first", type=int, default=5,
                   help="portfolio members listed first, as QuickTuneSampler starts with them (0: the surrogate's ranking alone)")
    p.add_argument("--enqueue", metavar="STORAGE", default=None,
                   help="also enqueue them as WAITING trials in this Optuna storage (needs --study)")
    p.add_argument("--study", default=None, help="study to enqueue into (created if absent)")
    p.add_argument("--json", action="store_true", help="print the suggestions as JSON")
    p.set_defaults(func=_run_suggest)
    return p


def _pick_surrogate(name: str | None, model: str | None) -> str:
    """The named surrogate, else the packaged one for ``--model``'s family (see :func:`pretrained.pick`).

    A model no packaged surrogate was meta-trained with (your own checkpoint) still gets an answer:
    the default family's surrogate, with a note, since its ranking is the best prior there is short
    of collecting runs with that model.
    """
    if name:
        return name
    try:
        return pick(model)
    except SurrogateFormatError:
        if model is None:
            raise
        chosen = pick(None)
        print(f"No packaged surrogate was meta-trained with {model!r}; using {chosen!r} ({catalog()[chosen]}). "
              "Pass --surrogate to choose another.", file=sys.stderr)
        return chosen


def _read_metafeatures(arg: str) -> dict[str, float]:
    text = Path(arg).read_text() if Path(arg).is_file() else arg
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--metafeatures is neither a JSON file nor inline JSON ({e}).") from e
    if not isinstance(value, dict):
        raise ValueError("--metafeatures must be a JSON object {name: number}.")
    return {str(k): float(v) for k, v in value.items()}


def _run_suggest(args: argparse.Namespace) -> int:
    if (args.dataset is None) == (args.metafeatures is None):
        raise ValueError("Give a dataset file or --metafeatures (one of them).")
    if (args.enqueue is None) != (args.study is None):
        raise ValueError("--enqueue STORAGE and --study NAME go together.")
    chosen = _pick_surrogate(args.surrogate, args.model)
    s = load_surrogate(chosen)
    if args.metafeatures is not None:
        mf = _read_metafeatures(args.metafeatures)
    else:
        if not Path(args.dataset).is_file():
            raise FileNotFoundError(f"Dataset file {args.dataset!r} does not exist.")
        model = args.model or surrogate_model(s)
        if model is None:
            raise ValueError("The surrogate does not say which model it was meta-trained with; pass --model.")
        mf = dataset_metafeatures(args.dataset, model, question_field=args.question_field,
                                  answer_field=args.answer_field, seed=args.seed)
    direction = args.direction or surrogate_direction(s)
    if direction is None:
        raise ValueError("The surrogate does not record its metric's direction; pass --direction.")
    study = None
    if args.enqueue is not None:
        study = optuna.create_study(storage=args.enqueue, study_name=args.study, direction=direction,
                                    load_if_exists=True)
    found = suggest(s, mf, k=args.k, fidelity_max=args.fidelity, direction=direction,
                    n_candidates=args.candidates, seed=args.seed, study=study, portfolio_first=args.portfolio_first)
    if args.json:
        print(json.dumps([asdict(x) for x in found], indent=1))
    else:
        metric = (s.info.get("collect") or {}).get("metric", "score")
        unit = ((s.info.get("collect") or {}).get("fidelity") or {}).get("unit", "step")
        print(format_suggestions(found, metric=metric, unit=unit))
    if study is not None:
        print(f"Enqueued {len(found)} WAITING trial(s) in study {study.study_name!r}; run them with "
              f"QuickTuneSampler({chosen!r}) so the rest of the study follows the same "
              "surrogate.", file=sys.stderr)
    return 0
