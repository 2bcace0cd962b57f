"""Every example runs as a script in its reduced form (``--smoke``), or says why it cannot.

The examples are run as subprocesses, as a user would run them, so that what they set globally
(torch threads, logging) does not leak into other tests. ``build_metadataset.py --smoke`` and
``hf_trainer_search.py --smoke`` are chained as in the docs: the surrogate of the first is the one
the second uses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str, timeout: float = 600) -> str:
    env = dict(os.environ, PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, f"{name} {' '.join(args)} exited with {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r.stdout


def test_every_example_is_tested_or_says_why_not():
    tested = {"cpu_demo.py", "postgres_workers.py", "build_metadataset.py", "hf_trainer_search.py", "phi3_gpu.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested
    assert "NEEDS: a CUDA GPU" in (EXAMPLES / "phi3_gpu.py").read_text()


@pytest.mark.slow
def test_cpu_demo_smoke(tmp_path):
    out = run_example("cpu_demo.py", "--smoke", "--workdir", str(tmp_path))
    assert "best score" in out and "meta-dataset: MetaDataset(4 tasks" in out
    assert (tmp_path / "surrogate").is_dir() and (tmp_path / "target.db").is_file()


@pytest.mark.postgres
def test_postgres_workers_smoke(postgres_url, surrogate_dir):
    pytest.importorskip("psycopg2", reason="needs psycopg2 (the [dev] extra)")
    out = run_example("postgres_workers.py", "--smoke", "--storage", postgres_url, "--surrogate", str(surrogate_dir))
    assert "2 workers, 6 trials" in out and "duplicated claims: 0" in out


@pytest.fixture(scope="module")
def smoke_metadataset(tmp_path_factory) -> Path:
    pytest.importorskip("trl", reason="needs the [trl] extra")
    work = tmp_path_factory.mktemp("metadataset")
    out = run_example("build_metadataset.py", "--smoke", "--workdir", str(work))
    assert "meta-dataset: MetaDataset(3 tasks, 6 runs" in out
    return work


@pytest.mark.slow
def test_build_metadataset_smoke(smoke_metadataset):
    from optuna_quicktune import load_surrogate

    s = load_surrogate(smoke_metadataset / "surrogate")
    assert s.max_fidelity == 2 and "log_n_train" in s.metafeature_names


@pytest.mark.slow
def test_hf_trainer_search_smoke(smoke_metadataset):
    pytest.importorskip("peft", reason="needs the [trl] extra")
    out = run_example("hf_trainer_search.py", "--smoke", "--surrogate", str(smoke_metadataset / "surrogate"),
                      "--workdir", str(smoke_metadataset))
    assert "2 proposed by QuickTune" in out, out[-2000:]


def test_phi3_gpu_explains_what_it_needs():
    """No GPU here: the example must stop at once and say why (with a GPU it would start finetuning)."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the example would really finetune Phi-3-mini")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, str(EXAMPLES / "phi3_gpu.py"), "--surrogate", "x", "--dataset", "y", "--trials", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode != 0 and "needs a CUDA GPU" in r.stderr
