# i2vlab — make targets. Everything runs inside .venv, created on first use and reused after.
#   make demo   install, build toy shards, fine-tune the published toy models, sample, score (scripts/demo.py)
#   make test   install and run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# local wheel folder holding torch 2.14.1 / torchvision 0.29.1 on the project's machines (optional)
TORCH_WHEELS ?= /opt/pypi-more/files
FIND_LINKS := $(if $(wildcard $(TORCH_WHEELS)),--find-links $(TORCH_WHEELS),)
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_DIR ?= outputs/demo

.PHONY: install demo test test-fast lint format toy-data bench clean clean-all

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(FIND_LINKS) -c constraints.txt -e '.[dev]'
	@touch $(STAMP)
	@echo "installed into $(VENV)"

toy-data: install
	$(BIN)/python scripts/make_toy_shards.py --out data/toy

demo: install
	@rm -rf $(DEMO_DIR)
	$(BIN)/python scripts/make_toy_shards.py --out data/toy
	$(BIN)/python scripts/demo.py --out $(DEMO_DIR) --data data/toy

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests scripts train.py evaluate.py
	$(BIN)/ruff format --check src tests scripts train.py evaluate.py

format: install
	$(BIN)/ruff check --fix src tests scripts train.py evaluate.py
	$(BIN)/ruff format src tests scripts train.py evaluate.py

bench: install  ## CPU-sized by default; see each script for full-size GPU options
	$(BIN)/python scripts/bench/bench_dataloader.py
	$(BIN)/python scripts/bench/bench_training.py
	$(BIN)/python scripts/bench/bench_sampling.py
	$(BIN)/python scripts/bench/bench_evaluator.py

clean:
	rm -rf outputs multirun data/toy .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +

clean-all: clean
	rm -rf $(VENV) src/*.egg-info
