"""Weight-sync route selection (rollout.weight_sync): the NCCL route only where it can work, clear errors otherwise.
The NCCL transfer itself needs GPUs (not available to this suite); the blob route is exercised end to end by
tests/test_grpo_loop.py and tests/test_rollout.py."""

import pytest

from actors.weight_route import engine_kw, route_for
from aigq.config import build_config
from rollout.native_sync import WeightRouteError, resolve_route


def test_auto_picks_nccl_only_with_vllm_and_gpus_on_both_sides():
    assert resolve_route("auto", "vllm", 1, 1) == "nccl"
    assert resolve_route("auto", "vllm", 0, 1) == "blob"
    assert resolve_route("auto", "vllm", 1, 0) == "blob"
    assert resolve_route("auto", "transformers", 1, 1) == "blob"
    assert resolve_route("blob", "vllm", 1, 1) == "blob"


@pytest.mark.parametrize("engine,rg,lg,needle", [("transformers", 1, 1, "rollout.engine=vllm"),
                                                  ("vllm", 0, 0, "needs GPUs")])
def test_nccl_where_it_cannot_work_is_a_clear_error(engine, rg, lg, needle):
    with pytest.raises(WeightRouteError, match=needle):
        resolve_route("nccl", engine, rg, lg)


def test_engine_options_follow_the_route():
    cpu = build_config({}, ["rollout.engine=vllm"])
    assert route_for(cpu) == "blob" and "weight_transfer" not in engine_kw(cpu)
    gpu = build_config({}, ["rollout.engine=vllm", "rollout.gpus_per_worker=1", "learner.gpus_per_worker=1",
                            "rollout.dtype=bfloat16"])
    assert route_for(gpu) == "nccl"
    assert engine_kw(gpu) == {"dtype": "bfloat16", "weight_transfer": "nccl"}
    with pytest.raises(WeightRouteError):
        route_for(build_config({}, ["rollout.weight_sync=nccl"]))


def test_the_nccl_route_names_match_the_installed_vllm():
    """The trainer-side classes and the control calls NCCLSender / RolloutWorker rely on exist in this vLLM (an API
    rename would otherwise surface only on a GPU cluster)."""
    pytest.importorskip("vllm")
    from vllm.distributed.weight_transfer.base import ModuleSource
    from vllm.distributed.weight_transfer.clients import RayVLLMWeightSyncClient
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine
    from vllm.entrypoints.llm import LLM

    from actors.rollout import RolloutWorker

    info = NCCLTrainerInitInfo(master_address="127.0.0.1", master_port=29500, world_size=3, rank=0)
    assert info.is_sender and info.world_size == 3
    assert callable(NCCLTrainerWeightTransferEngine.trainer_init) and ModuleSource
    calls = ("init_weight_transfer_engine", "start_weight_update", "update_weights", "finish_weight_update",
             "shutdown_weight_transfer_engine")
    for call in calls:
        assert hasattr(LLM, call), call  # what VLLMEngine.transfer forwards to
        assert hasattr(RolloutWorker, call), call  # what RayVLLMWeightSyncClient calls on our actors
        assert hasattr(RayVLLMWeightSyncClient, call), call
