"""Replay benchmark: QuickTune against per-task optimisers and transfer baselines on a simulated clock.

* :mod:`~optuna_quicktune.benchmark.scenarios` - where curves come from; MetaDataset tables
* :mod:`~optuna_quicktune.benchmark.yahpo` - YAHPO-Gym ONNX folders (LCBench, rbv2, iaml)
* :mod:`~optuna_quicktune.benchmark.replay` - the simulated clock and the replaying Optuna objective
* :mod:`~optuna_quicktune.benchmark.methods` - QuickTune and the baselines
* :mod:`~optuna_quicktune.benchmark.runner` - leave-one-task-out runs, seeds, cached meta-training
* :mod:`~optuna_quicktune.benchmark.report` - normalised regret, ranks, JSON/Markdown/PNG outputs
* :mod:`~optuna_quicktune.benchmark.cli` - ``quicktune bench``
"""

from optuna_quicktune.benchmark.methods import DEFAULT_METHODS, METHODS
from optuna_quicktune.benchmark.runner import BenchConfig, run_benchmark
from optuna_quicktune.benchmark.scenarios import Scenario, TableScenario
from optuna_quicktune.benchmark.yahpo import YahpoScenario, lcbench

__all__ = ["BenchConfig", "run_benchmark", "Scenario", "TableScenario", "YahpoScenario", "lcbench", "METHODS", "DEFAULT_METHODS"]
