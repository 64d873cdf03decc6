"""Weight sync learner → vLLM rollout workers, GPU route: vLLM's native weight-transfer engine (NCCL broadcast).

The CPU route (``rollout.weight_sync``) ships one safetensors blob through Ray's object store. On GPUs that
is a device → host → object store → host → device round trip per update; vLLM ships a trainer ↔ inference NCCL
group for exactly this (``vllm.distributed.weight_transfer``):

    learner rank 0 (trainer, NCCL rank 0) ──broadcast──► every vLLM worker of every rollout engine (ranks 1…)

* the vLLM engines start with ``weight_transfer_config={"backend": "nccl"}`` (``VLLMEngine(weight_transfer="nccl")``);
* each ``RolloutWorker`` actor exposes vLLM's five control calls (``init_weight_transfer_engine``,
  ``start_weight_update``, ``update_weights``, ``finish_weight_update``, ``shutdown_weight_transfer_engine``), so
  vLLM's own ``RayVLLMWeightSyncClient`` drives them from the learner;
* learner rank 0 builds ``NCCLTrainerWeightTransferEngine`` over ``ModuleSource(model)`` (named parameters: a tied
  ``lm_head`` travels once, as the embedding) and calls ``send_weights()`` after every update. Other learner ranks
  hold identical weights (DDP) and take no part.

``vllm`` is imported only inside these functions. The route is chosen by :func:`resolve_route`
(``rollout.weight_sync``); on CPU-only clusters it is always the blob route.

Status: written against the installed vLLM's weight-transfer API (``vllm/distributed/weight_transfer``); no GPU
machine was available to run it, so it is untested (README, "IL-GRPO on Ray").
"""

from __future__ import annotations

from typing import Any


class WeightRouteError(ValueError):
    """A weight-sync route that cannot work with this configuration."""


def resolve_route(requested: str, engine: str, rollout_gpus: float, learner_gpus: float) -> str:
    """``rollout.weight_sync`` → the route used: "blob" (safetensors through the object store, any device) or
    "nccl" (vLLM's native NCCL transfer; needs the vLLM engine and GPUs on both the learner and the rollout
    workers). "auto" picks nccl exactly when it can work."""
    gpus = rollout_gpus > 0 and learner_gpus > 0
    if requested == "auto":
        return "nccl" if engine == "vllm" and gpus else "blob"
    if requested == "nccl":
        if engine != "vllm":
            raise WeightRouteError("rollout.weight_sync=nccl needs rollout.engine=vllm (the transformers engine "
                                   "loads blobs only)")
        if not gpus:
            raise WeightRouteError("rollout.weight_sync=nccl needs GPUs on the learner and the rollout workers "
                                   f"(learner.gpus_per_worker={learner_gpus:g}, rollout.gpus_per_worker="
                                   f"{rollout_gpus:g}); use blob (or auto) on CPU")
    return requested


class NCCLSender:
    """Trainer side of the NCCL route, held by learner rank 0: one transfer group with ``n_inference_ranks`` vLLM
    workers (the sum of every rollout engine's tensor-parallel size)."""

    def __init__(self, model: Any, rollout_handles: list[Any], n_inference_ranks: int, master_address: str,
                 master_port: int):
        from vllm.distributed.weight_transfer.base import ModuleSource
        from vllm.distributed.weight_transfer.clients import RayVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

        module = getattr(model, "module", model)  # unwrap DDP: vLLM wants the checkpoint names
        info = NCCLTrainerInitInfo(master_address=master_address, master_port=master_port,
                                   world_size=1 + n_inference_ranks, rank=0)
        self.engine = NCCLTrainerWeightTransferEngine.trainer_init(
            info, client=RayVLLMWeightSyncClient(list(rollout_handles)), source=ModuleSource(module))

    def send(self) -> None:
        """Broadcast the current weights; returns once every vLLM worker has loaded them."""
        self.engine.send_weights()

    def close(self) -> None:
        self.engine.shutdown()
