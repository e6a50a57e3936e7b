# Two entry points (README "Quick start"): `make repro` (set up + run the pipeline) and `make test`.
# Both create or reuse .venv; `bnas` is then .venv/bin/bnas.
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
# Local data root: BNAS_DATA if set, else ../shared/data when it exists (this team's offline copy).
BNAS_DATA ?= $(if $(wildcard ../shared/data/cifar10),$(abspath ../shared/data),)
export BNAS_DATA
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE ?= 1

.PHONY: install repro test lint ui clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch, torchvision, timm and the rest in ONE pip command, pinned by constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

repro: install
	$(BIN)/dvc repro

test: install
	$(BIN)/ruff check harness methods tests
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check harness methods tests
	$(BIN)/ruff format --check harness methods tests

ui: install
	$(BIN)/bnas ui

clean:
	rm -rf $(VENV) .pytest_cache
