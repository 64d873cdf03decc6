"""Parameter-efficient training on the learner group (issue 18): LoRA adapters (``peft``), frozen lower layers and
embeddings, trainable Eq. 1 special-token rows, bf16 autocast on CPU. Pure torch + peft: no Ray.

What trains (``learner.*``):

* full fine-tune (default, ``lora.enabled=false``, ``freeze_layers=0``): every parameter, as before;
* ``lora.enabled``: rank-r adapters ``W + (alpha/r)·B·A`` on ``lora.target_modules`` of every decoder layer (or of the
  layers above ``freeze_layers``); the base model is frozen;
* ``freeze_layers=N`` without LoRA: the input / output embeddings and decoder layers 0…N−1 are frozen, the layers
  above and the final norm train.

Whenever the embeddings are frozen (either mode) the rows of the tokens Eq. 1 added (``<1>``, ``<Today>``,
``<search>``, ``<q1>``, …; ``special_rows``) stay trainable: ``SpecialRows`` holds a zero-initialised delta per added
token that is added to the input embedding's output (and to the logits' columns of those tokens through the output
embedding, tied or untied). Only the trainable tensors (adapters, deltas, unfrozen layers) are in the optimizer and
in DDP's gradient all-reduce (DDP skips ``requires_grad=False`` parameters). The rows' gradient reaches the input
embeddings, so with special rows on, the backward pass runs through the frozen lower layers too (activation
gradients only, no weight gradients); ``learner.special_rows=false`` stops it at the first trainable layer.

The training model is the Hugging Face model itself with the adapters injected in place (``peft`` modules inside
it, ``SpecialRows`` as the submodule ``aigq_special_rows``), so everything that reads it as an HF model
(``TargetLM``, ``TokenLogProbs``) works unchanged. Leaving the learner, weights are always **merged**
(``merged_state``: each LoRA weight ``W + get_delta_weight``, exactly what peft's ``merge_and_unload`` computes, and
each special row ``W[i] + delta[i]``), under the plain model's names: rollout workers load them through the existing
weight-sync path and saved policies are normal HF folders. Checkpoints hold only the trainable tensors
(``trainable_state``) next to the base folder's path and digest (``learner.checkpoint``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aigq.atomic import staged_dir
from aigq.config import LearnerConfig

log = logging.getLogger(__name__)
ROWS = "aigq_special_rows"  # submodule name of the trainable special-token rows
ADAPTER = "default"  # peft adapter name


def is_efficient(lc: LearnerConfig) -> bool:
    """True when only part of the model trains (LoRA or frozen layers): checkpoints then hold the trainable
    tensors, not the whole model."""
    return lc.lora.enabled or lc.freeze_layers > 0


# ---------------------------------------------------------------- bf16 autocast


def bf16_supported(device: torch.device) -> tuple[bool, str]:
    """Whether bf16 autocast runs natively on ``device``, and why not. On CPU: the AVX-512 BF16 (or AMX) path that
    oneDNN uses; without it bf16 matmuls are emulated and slower than float32."""
    if device.type == "cuda":
        return (torch.cuda.is_bf16_supported(), "this GPU has no bf16")
    cpu = getattr(torch, "cpu", None)
    native = bool(cpu is not None and (getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                                       or getattr(cpu, "_is_amx_tile_supported", lambda: False)()))
    return native, "this CPU has no native bf16 (no AVX-512 BF16 / AMX)"


def autocast_for(enabled: bool, device: torch.device) -> tuple[Callable[[], AbstractContextManager], str]:
    """(context factory for the forward passes, what it does in words). ``enabled`` = ``learner.bf16``; a device
    without native bf16 falls back to float32 and says so (also in the log)."""
    if not enabled:
        return nullcontext, "float32"
    ok, why = bf16_supported(device)
    if not ok:
        log.warning("learner.bf16=true but %s: training in float32", why)
        return nullcontext, f"float32 (learner.bf16 requested, but {why})"
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), "bf16 autocast"


# ---------------------------------------------------------------- special-token rows


class SpecialRows(nn.Module):
    """Trainable deltas for the embedding rows of ``ids`` on top of frozen embeddings. Input: the embedding output
    gains ``delta[slot(token)]`` (zero for other tokens). Output: the logits of the ``ids`` columns gain ``h ·
    delta_out[i]``; with tied embeddings ``delta_out`` is ``delta_in`` (one row serves both, as in the merged
    model). Zero at the start: the model's outputs are unchanged until the first update."""

    def __init__(self, model: nn.Module, ids: Sequence[int]):
        super().__init__()
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
        n, hidden = len(ids), emb.weight.shape[1]
        self.register_buffer("ids", torch.tensor(list(ids), dtype=torch.long), persistent=False)
        slot = torch.full((emb.weight.shape[0],), n, dtype=torch.long)
        slot[self.ids] = torch.arange(n)
        self.register_buffer("slot", slot, persistent=False)
        self.delta_in = nn.Parameter(torch.zeros(n, hidden, dtype=emb.weight.dtype))
        self.tied = head is not None and head.weight is emb.weight
        self.delta_out = (nn.Parameter(torch.zeros(n, hidden, dtype=head.weight.dtype))
                          if head is not None and not self.tied else None)
        # hooks hold the module by closure, not as an attribute (no module cycle)
        emb.register_forward_hook(lambda _m, inp, out: self.add_input(inp[0], out))
        if head is not None:
            head.register_forward_hook(lambda _m, inp, out: self.add_output(inp[0], out))

    def add_input(self, input_ids: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        table = torch.cat([self.delta_in, self.delta_in.new_zeros(1, self.delta_in.shape[1])])
        return out + F.embedding(self.slot[input_ids], table).to(out.dtype)

    def add_output(self, hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        delta = self.delta_in if self.delta_out is None else self.delta_out
        return logits.index_add(-1, self.ids, (hidden @ delta.t()).to(logits.dtype))


def special_token_ids(tokenizer, tokens: Iterable[str]) -> list[int]:
    """Ids of the Eq. 1 / output-format tokens the tokenizer holds (unknown ones are skipped), sorted."""
    vocab = tokenizer.get_vocab()
    return sorted({vocab[t] for t in tokens if t in vocab})


def policy_special_ids(tokenizer, cfg) -> list[int]:
    """The rows ``SpecialRows`` trains for a run: every token ``aigq.models.factory.policy_tokens`` adds (Eq. 1's
    prompt tokens, the slot markers) plus Think's reasoning span, where the tokenizer holds them."""
    from aigq.data import prompt as P
    from aigq.models.factory import policy_tokens

    return special_token_ids(tokenizer, policy_tokens(cfg) + P.output_special_tokens(cfg.samples.label_cap, True))


# ---------------------------------------------------------------- setting a model up


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(model, "base_model", model), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: no decoder layer list at model.base_model.layers "
                         "(learner.freeze_layers / lora need a Llama/Qwen-style causal LM)")
    return layers


def linear_names(model: nn.Module) -> list[str]:
    """``lora.target_modules=all-linear`` resolved: the distinct names of the Linear modules inside the decoder
    layers (q/k/v/o and the MLP's projections; never the LM head)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in decoder_layers(model).named_modules()
                   if isinstance(m, nn.Linear)})


@dataclass
class Efficient:
    """What ``prepare`` did to a model."""

    mode: str  # "full", "lora", "freeze", "lora+freeze"
    trainable: int  # trainable parameters (numel)
    total: int
    special_ids: list[int] = field(default_factory=list)
    lora: dict[str, Any] | None = None  # the peft LoraConfig as a dict (targets resolved)
    peft_model: Any = None  # the PeftModel wrapper (its base model is the model trained), for adapter saving

    def describe(self) -> str:
        rows = f", {len(self.special_ids)} special-token rows" if self.special_ids else ""
        return (f"{self.mode}: {self.trainable:,} of {self.total:,} parameters train "
                f"({100 * self.trainable / max(self.total, 1):.2f}%){rows}")


def prepare(model: nn.Module, lc: LearnerConfig, special_ids: Sequence[int] = (), seed: int = 0) -> Efficient:
    """Set ``model`` (a Hugging Face causal LM) up for ``lc`` in place: inject LoRA adapters, freeze layers, add
    the special-token rows. Seeded (``seed``), so every rank and a resumed run build the same adapters. A full
    fine-tune leaves the model as it is."""
    total = sum(p.numel() for p in model.parameters())
    n_freeze = lc.freeze_layers
    if not is_efficient(lc):
        return Efficient("full", total, total)
    layers = decoder_layers(model)
    if n_freeze > len(layers):
        raise ValueError(f"learner.freeze_layers={n_freeze} but the model has {len(layers)} decoder layers")
    lora_dict = None
    peft_model = None
    if lc.lora.enabled:
        from peft import LoraConfig, get_peft_model

        targets = linear_names(model) if lc.lora.target_modules == "all-linear" else list(lc.lora.target_modules)
        kw: dict[str, Any] = {"layers_to_transform": list(range(n_freeze, len(layers)))} if n_freeze else {}
        config = LoraConfig(r=lc.lora.rank, lora_alpha=lc.lora.alpha, lora_dropout=lc.lora.dropout,
                            target_modules=targets, bias="none", task_type="CAUSAL_LM", **kw)
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)  # freezes the base, injects adapters into ``model`` in place
        if peft_model.get_base_model() is not model:
            raise RuntimeError("peft did not inject the adapters in place")
        lora_dict = {"r": lc.lora.rank, "alpha": lc.lora.alpha, "dropout": lc.lora.dropout, "targets": targets,
                     "layers": kw.get("layers_to_transform")}
    else:
        for p in model.get_input_embeddings().parameters():
            p.requires_grad_(False)
        head = model.get_output_embeddings()
        if head is not None:
            head.requires_grad_(False)
        for layer in layers[:n_freeze]:
            layer.requires_grad_(False)
    ids = list(special_ids) if lc.special_rows else []
    if ids:
        model.add_module(ROWS, SpecialRows(model, ids))
    mode = "lora+freeze" if lc.lora.enabled and n_freeze else "lora" if lc.lora.enabled else "freeze"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Efficient(mode, trainable, total, ids, lora_dict, peft_model)


def trainable_params(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer steps (all of them for a full fine-tune), in module order."""
    return [p for p in model.parameters() if p.requires_grad]


# ---------------------------------------------------------------- trainable state (checkpoints)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor by its name in the training model (adapters, special-row deltas, unfrozen layers)."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``trainable_state`` output back: the names must be exactly the model's trainable ones."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(f"checkpoint's trainable tensors do not match the learner config (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}): resume with the learner.lora / freeze_layers / "
                         "special_rows settings it was written with")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n])


def folder_digest(folder: Path) -> str:
    """sha256 over a model folder's weight files (names and bytes): a checkpoint's base must not change."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.safetensors")):
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- merged weights (sync, saved policies)


@torch.no_grad()
def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as a plain HF state dict with the adapters and special rows merged in: for each LoRA
    layer ``W + get_delta_weight`` (peft's ``merge_and_unload`` arithmetic), for each special row ``W[i] +
    delta[i]`` (input rows; and output rows when untied). A full fine-tune's state dict is returned as is
    (detached). Tied embeddings stay one tensor under both names."""
    model = getattr(model, "module", model)
    sd = model.state_dict(keep_vars=True)  # parameters themselves (identity tells tied names apart)
    if not any(".lora_" in k or k.startswith(ROWS + ".") for k in sd):
        return {k: v.detach() for k, v in sd.items()}
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # no peft: no LoRA layers
        LoraLayer = ()  # noqa: N806
    out: dict[str, torch.Tensor] = {}
    replaced: dict[int, torch.Tensor] = {}  # id(original tensor) → merged tensor (tied names share it)
    for module in model.modules():
        if isinstance(module, LoraLayer) and ADAPTER in getattr(module, "lora_A", {}):
            w = module.get_base_layer().weight
            replaced[id(w)] = w.detach() + module.get_delta_weight(ADAPTER).to(w.dtype)
    rows = getattr(model, ROWS, None)
    if rows is not None:
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings()
        new = replaced.get(id(emb), emb.detach()).clone()
        new[rows.ids] += rows.delta_in.to(new.dtype)
        replaced[id(emb)] = new
        if head is not None and rows.delta_out is not None:
            hw = head.weight
            new_h = replaced.get(id(hw), hw.detach()).clone()
            new_h[rows.ids] += rows.delta_out.to(new_h.dtype)
            replaced[id(hw)] = new_h
    for k, v in sd.items():
        if ".lora_" in k or k.startswith(ROWS + "."):
            continue
        out[k.replace(".base_layer.", ".")] = replaced.get(id(v), v.detach())
    return out


def sync_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``merged_state`` without a tied ``lm_head.weight`` (it travels once, as the embedding): what the learner
    sends to rollout workers (``rollout.weight_sync``)."""
    model = getattr(model, "module", model)
    state = merged_state(model)
    if bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False)):
        state.pop("lm_head.weight", None)
    return {k: v.contiguous() for k, v in state.items()}


def save_merged(model: nn.Module, tokenizer, out: Path, eff: Efficient | None = None) -> Path:
    """A normal Hugging Face folder with the merged weights (loadable by every loader: engines, Serve, eval);
    with LoRA or special rows also ``adapter/``: the trainable tensors (``trainable.safetensors``) and, for LoRA,
    peft's own adapter files (``adapter_config.json``, ``adapter_model.safetensors``) — the base is the folder the
    run started from (``adapter/aigq_adapter.json``). Written whole into a temporary sibling and swapped in
    (:func:`aigq.atomic.staged_dir`): Serve or eval reading ``out`` meanwhile see the old policy or the new one."""
    out = Path(out)
    model = getattr(model, "module", model)
    with staged_dir(out) as tmp:
        _write_merged(model, tokenizer, tmp, eff)
    return out


def _write_merged(model: nn.Module, tokenizer, out: Path, eff: Efficient | None) -> None:
    from safetensors.torch import save_file

    state = merged_state(model)
    if eff is None or eff.mode == "full":
        model.save_pretrained(out)
    else:
        from transformers import AutoModelForCausalLM

        # a plain model of the same config, merged weights loaded: no adapter modules, no hooks, nothing peft
        plain = AutoModelForCausalLM.from_config(model.config, dtype=next(iter(state.values())).dtype)
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        missing, unexpected = plain.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not (tied and k == "lm_head.weight")]:
            raise RuntimeError(f"merged state does not fit the plain model: missing {missing}, unexpected {unexpected}")
        if tied:
            plain.tie_weights()
        plain.save_pretrained(out)
        adapter = out / "adapter"
        adapter.mkdir(parents=True, exist_ok=True)
        save_file(trainable_state(model), adapter / "trainable.safetensors")
        if eff.peft_model is not None:
            eff.peft_model.save_pretrained(adapter)
        (adapter / "aigq_adapter.json").write_text(json.dumps(
            {"mode": eff.mode, "lora": eff.lora, "special_ids": eff.special_ids,
             "base": str(getattr(model.config, "_name_or_path", "")),
             "note": "the folder above holds the merged policy; these tensors are the trained part only"}, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
