"""Weight sync learner → rollout engines, CPU route: the learner serialises its state dict once with safetensors
(one bytes blob; Ray passes it by reference from the object store to every worker) and each engine rebuilds the
tensors and loads them in place. Tied embeddings travel once (``lm_head.weight`` is dropped when it is the input
embedding). The GPU route (vLLM's native NCCL/IPC weight transfer) is ``VLLMEngine.load_weights`` on CUDA.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save


def state_for_sync(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers to send, unwrapped from DDP, without a tied ``lm_head.weight``."""
    model = getattr(model, "module", model)
    sd = model.state_dict()
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    if tied:
        sd.pop("lm_head.weight", None)
    return {k: v.detach().contiguous() for k, v in sd.items()}


def serialise(model_or_state: torch.nn.Module | dict[str, torch.Tensor]) -> bytes:
    state = model_or_state if isinstance(model_or_state, dict) else state_for_sync(model_or_state)
    return st_save({k: v.detach().cpu().contiguous() for k, v in state.items()})


def deserialise(blob: bytes) -> dict[str, torch.Tensor]:
    return st_load(blob)


def iter_weights(blob: bytes) -> Iterator[tuple[str, torch.Tensor]]:
    yield from deserialise(blob).items()


def check_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` naming the problem when ``state`` is not a full state of ``model`` (checked before any
    tensor is touched, so a bad update leaves the model as it was)."""
    own = getattr(model, "module", model).state_dict()
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    missing = [k for k in own if k not in state and not (tied and k == "lm_head.weight")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"weight sync: state does not match the model (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, shape {shapes[:5]})")


def load_into(model: torch.nn.Module, blob: bytes) -> None:
    """Load a blob into a transformers model in place (every tensor must match; a tied lm_head follows the
    embedding)."""
    state = deserialise(blob)
    check_state(model, state)
    model.load_state_dict(state, strict=False)
    if bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False)) and hasattr(model, "tie_weights"):
        model.tie_weights()
