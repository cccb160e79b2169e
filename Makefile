# Two commands on a fresh machine:  make train   (set up .venv, train the default model)
#                                   make test    (set up .venv, run the test suite)
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Optional: a pip index serving the torch build you want (e.g. PyTorch's CPU-only wheel index on a
# CPU machine whose default index only has CUDA builds). Empty: pip's configured index.
TORCH_INDEX_URL ?=
PYTEST_ARGS ?=
TRAIN_ARGS ?=

.PHONY: setup train test lint clean

setup: $(VENV)/.installed

# torch is installed first and pinned: an unpinned torch (or a package that pulls one) would make
# pip choose the newest CUDA build (several GB) even on a CPU-only machine. With a GPU present,
# the default index's build of the same version is the CUDA one.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" -e ".[dev,llama]"
	$(PY) -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"
	touch $@

train: setup
	$(PY) -m bitnet_train $(TRAIN_ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
