# Two entry points (README "Two commands"): `make repro` (set up + run the pipeline) and `make test`.
# Both create or reuse .venv; `bnas` is then .venv/bin/bnas.
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
# Local data root: BNAS_DATA if set, else ../shared/data when it exists (this team's offline copy).
BNAS_DATA ?= $(if $(wildcard ../shared/data/cifar10),$(abspath ../shared/data),)
export BNAS_DATA
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE ?= 1
# ImageNet (opt-in): an ImageNet-layout root (train/<wnid>/, val/<wnid>/); default: the Imagenette copy in BNAS_DATA
IMAGENET ?= $(if $(BNAS_DATA),$(BNAS_DATA)/imagenette,)
IMAGENET_METHODS := [bnas_d, bnas_e, bnas_f, bnas_g, bnas_h, bireal_resnet18, bireal_resnet34, xnornetpp_resnet18, \
  binarynet_resnet18, abcnet_resnet18, abcnet_resnet34, cbcn_resnet18, bonn_resnet18, bnas_d_noreg, bnas_d_v2]
# ReActNet distils from a real teacher: TEACHER (a timm model) with TEACHER_WEIGHTS (`pretrained`: timm's cached
# weights, or a model.pt); without TEACHER_WEIGHTS the ReActNet rows are left out
TEACHER ?= resnet34
TEACHER_WEIGHTS ?=
comma := ,
IMAGENET_DISTILLED = $(if $(TEACHER_WEIGHTS),[react_resnet18$(comma) reactnet_a],[])
.PHONY: install repro repro-small repro-paper repro-imagenet bench test test-views lint ui plots exp clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch, torchvision, timm and the rest in ONE pip command, pinned by constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# `dvc plots show` renders offline: this checkout's DVC config points at a page template with vega inlined
	$(BIN)/bnas plots --template-only .dvc/tmp/plots_offline.html
	$(BIN)/dvc config --local plots.html_template tmp/plots_offline.html
	touch $@

install: $(VENV)/.installed

repro: install
	$(BIN)/dvc repro

# The small profile (pipelines/small/dvc.yaml): 3 seeds of every row and every search, 2 h 24 min on a 2-core CPU (measured); its tables
# and figures are the committed results/ (the quick profile's go to results/quick/).
repro-small: install
	$(BIN)/dvc repro pipelines/small/dvc.yaml

# The paper profile (GPUs): the paper's settings and BNAS's CIFAR recipe for every row, 5 retraining seeds, 5 searches,
# as a DVC experiment.
repro-paper: install
	$(BIN)/bnas config --pipeline paper | xargs -d '\n' $(BIN)/dvc exp run

# The ImageNet pipeline as a DVC experiment: prepare IMAGENET, train BNAS-D..H and the ImageNet baselines, tables.
repro-imagenet: install
	test -n "$(IMAGENET)" || (echo "set IMAGENET=/path/to/imagenet (train/<wnid>/, val/<wnid>/)" >&2; exit 2)
	$(BIN)/dvc exp run -S 'pipelines/params.yaml:pipeline.imagenet_source=[$(IMAGENET)]' \
	  -S 'pipelines/params.yaml:pipeline.imagenet_methods=$(IMAGENET_METHODS)' \
	  -S 'pipelines/params.yaml:pipeline.imagenet_decoupled=[binaryduo_resnet18]' \
	  -S 'pipelines/params.yaml:pipeline.imagenet_pretrained=[pcnn_resnet18, bnas_d_v2_multistage]' \
	  -S 'pipelines/params.yaml:pipeline.imagenet_distilled=$(IMAGENET_DISTILLED)' \
	  -S 'pipelines/params.yaml:pipeline.imagenet_teacher.model=$(TEACHER)' \
	  -S 'pipelines/params.yaml:pipeline.imagenet_teacher.weights=$(TEACHER_WEIGHTS)'

# Benchmarks on this machine's CPU (and `bnas bench --device cuda` on a GPU): results/bench.{json,md}.
bench: install
	$(BIN)/bnas bench --device cpu --data data/cifar10

test: install
	$(BIN)/ruff check harness methods tests
	$(BIN)/ruff format --check harness methods tests
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The views as a person sees them: the MLflow UI and the `dvc plots show` page rendered in headless Chromium
# (Debian: `apt-get install chromium`), screenshots in $(VIEWS_OUT).
VIEWS_OUT ?= $(CURDIR)/views
test-views: install
	BNAS_VIEWS_OUT=$(VIEWS_OUT) $(BIN)/python -m pytest -m browser tests/test_views.py

lint: install
	$(BIN)/ruff check harness methods tests
	$(BIN)/ruff format --check harness methods tests
	$(BIN)/mypy

ui: install
	$(BIN)/bnas ui

# Training and search curves, each table's rows seed by seed: dvc_plots/index.html (no network needed)
plots: install
	$(BIN)/bnas plots

# The experiments, one row per run (dvc exp show has one column per run and metric)
exp: install
	$(BIN)/bnas exp

clean:
	rm -rf $(VENV) .pytest_cache
