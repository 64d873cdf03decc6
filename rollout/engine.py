"""Rollout engines behind one interface: prompts + sampling parameters in; per sample its token ids, the sampled
tokens' log-probabilities, text, parsed query list and the policy version it was sampled with out.

Two engines: ``HFEngine`` (transformers ``generate``; fallback and reference) and ``VLLMEngine`` (vLLM; ``vllm`` is
imported only inside it). ``make_engine`` picks one from the config. Log-probabilities are of the *unprocessed*
model distribution (log-softmax of the raw logits, before temperature / top-k), which is what the learner
recomputes; with temperature 1.0 and no top-k they are the sampling distribution's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aigq.data import prompt as P


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters. Defaults are the paper's (§5.1.4): G = 8 rollouts per prompt, temperature 1.0,
    top-k 100. ``max_tokens`` bounds one generated list ([GAP], ours: enough for 10 short queries)."""

    n: int = 8
    temperature: float = 1.0
    top_k: int = 100  # ≤ 0: no top-k
    top_p: float = 1.0
    max_tokens: int = 96
    seed: int | None = None  # per-call seed for reproducible sampling (greedy ignores it)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Rollout:
    prompt_index: int  # position of its prompt in the generate() call
    prompt_ids: list[int]
    token_ids: list[int]  # generated tokens, EOS included when the model stopped
    logprobs: list[float]  # one per generated token
    text: str  # decoded generated text, special tokens kept except EOS/pad
    queries: list[str]  # parsed list (``prompt.parse_output``)
    policy_version: int
    finish_reason: str  # "stop" (EOS) or "length"
    meta: dict = field(default_factory=dict)


class Engine(Protocol):
    policy_version: int

    def generate(self, prompts: list[str], sampling: Sampling) -> list[list[Rollout]]:
        """One list of ``sampling.n`` rollouts per prompt (prompts are raw sample prompts; the engine adds
        ``prompt.model_input``)."""
        ...

    def load_weights(self, blob: bytes, version: int) -> None:
        """Replace the policy weights with a safetensors-serialised state dict (``weight_sync.serialise``)."""
        ...

    def close(self) -> None: ...


def make_rollout(i: int, prompt_ids: list[int], token_ids: list[int], logprobs: list[float], text: str,
                 version: int, eos_id: int | None, variant: str) -> Rollout:
    finish = "stop" if token_ids and token_ids[-1] == eos_id else "length"
    return Rollout(i, prompt_ids, token_ids, logprobs, text, P.parse_output(text, variant), version, finish)


def make_engine(kind: str, model_dir: str | Path, variant: str = "direct", **kw) -> Engine:
    """``kind``: "vllm" or "transformers". Fails fast with a clear message when the folder or vLLM is missing."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a model folder (no config.json); run `aigq sft` or "
                                "`aigq models prepare` first")
    if kind == "transformers":
        from rollout.hf_engine import HFEngine

        return HFEngine(model_dir, variant=variant, **kw)
    if kind == "vllm":
        from rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_dir, variant=variant, **kw)
    raise ValueError(f"unknown rollout engine {kind!r}; expected 'vllm' or 'transformers'")
