"""The LearnerWorker group: N Ray actors in one placement group forming a torch.distributed process group (gloo on
CPU, nccl on GPU), each holding the policy wrapped in DistributedDataParallel. The driver sends each worker its shard
of a global batch; workers return their summed loss and token counts. All ranks start from the same folder and DDP
averages gradients, so after every step all ranks hold identical weights (``weights_digest``). Start folder, resumed
checkpoint and LoRA base come as paths or through the object store (``ship``, ``actors.shipping``), read once.

IL-SFT uses it now; IL-GRPO will call the same group with its policy loss.

    group = LearnerGroup(cfg, model_dir, total_steps, tokenizer.pad_token_id)
    metrics = group.train_step(batch_examples)      # list[Example] of one global batch
    group.save_checkpoint(root, config_yaml)        # rank 0 writes, every rank's RNG state included
    group.shutdown()
"""

from __future__ import annotations

import hashlib
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.shipping import ShippedFolder, local_folder, maybe_ship, source
from aigq.config import AIGQConfig, LearnerConfig
from learner import efficient as E
from learner.grpo_trainer import RLExample, collate_rl
from learner.sft import Example, count_targets, micro_batches


class LearnerConfigError(ValueError):
    """The learner group cannot be formed as configured (e.g. more workers than the cluster has CPUs)."""


def _name_source(model, origin: str) -> None:
    """Saved policies / adapters name the driver's folder, not this node's copy. (Not in the actor: its methods are
    pickled by value, and ``torch`` + ``.config`` in one method drag in the unpicklable ``torch.distributed.config``.)"""
    model.config._name_or_path = origin


@ray.remote
class LearnerWorker:
    def __init__(self, rank: int, world_size: int, cfg_json: str, model_dir: str | ShippedFolder, total_steps: int,
                 mode: str = "sft", base: str | ShippedFolder | None = None):
        """``base``: a LoRA checkpoint's base folder (it names a driver path) when that is not ``model_dir``."""
        self.rank, self.world_size, self.mode = rank, world_size, mode
        self.cfg = AIGQConfig.model_validate_json(cfg_json)
        self.origin = source(model_dir)  # the driver-side path, recorded in checkpoints (not the node-local copy)
        self.model_dir, self.total_steps = local_folder(model_dir), total_steps
        self.base = base
        self.trainer = None
        torch.set_num_threads(self.cfg.learner.cpus_per_worker)

    def address(self) -> tuple[str, int]:
        """Rank 0's reachable address and a free port for the process group's rendezvous."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int, resume: str | ShippedFolder | None = None) -> dict[str, Any]:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP

        from aigq.models.factory import load_policy, mark_variant
        from learner.checkpoint import read_checkpoint, restore_trainer
        from learner.trainer import SFTTrainer, set_rng_state

        lc = self.cfg.learner
        use_gpu = lc.gpus_per_worker > 0 and torch.cuda.is_available()
        backend = lc.backend if lc.backend != "auto" else ("nccl" if use_gpu else "gloo")
        dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{master_port}", rank=self.rank,
                                world_size=self.world_size, timeout=timedelta(seconds=lc.ready_timeout_s))
        ckpt = read_checkpoint(Path(local_folder(resume))) if resume else None
        self.base_dir = ckpt.model_dir if ckpt else Path(self.model_dir)  # a LoRA checkpoint's model_dir is its base
        if ckpt and ckpt.base is not None:  # … a driver path: use the shipped / given copy
            self.origin, self.base_dir = ckpt.base["path"], Path(local_folder(self.base or self.model_dir))
        model, self.tokenizer = load_policy(self.base_dir, self.cfg.model.dtype)
        # saved policies and checkpoints say what they were trained for (Serve's Think job checks it)
        # (a helper: cloudpickle would ship torch.distributed.config, unpicklable, for a `.config` in this method)
        mark_variant(model, self.cfg.grpo.variant if self.mode == "grpo" else self.cfg.sft.variant)
        _name_source(model, self.origin or str(self.base_dir))
        self.device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
        self.eff = self._efficient(model, ckpt)
        model.to(self.device)
        amp, precision = E.autocast_for(lc.bf16, self.device)

        def wrap(m):
            return DDP(m, device_ids=[0] if use_gpu else None, broadcast_buffers=False)

        if self.mode == "grpo":
            from learner.grpo_trainer import GRPOTrainer

            ref = None
            if self.cfg.grpo.kl_coef > 0:  # k3 KL to the starting policy (frozen copy)
                ref = load_policy(Path(self.model_dir), self.cfg.model.dtype)[0].to(self.device).eval()
            self.trainer = GRPOTrainer(model, self.cfg.grpo, self.total_steps, self.world_size, wrap, ref, amp)
        else:
            self.trainer = SFTTrainer(model, self.cfg.sft, self.total_steps, self.world_size, wrap, amp)
        torch.manual_seed(self.cfg.run.seed + self.rank)
        if ckpt:
            restore_trainer(self.trainer, ckpt)
            if self.mode == "grpo":
                self.trainer.iteration = int(ckpt.state.get("iteration", 0))
            # a resume with another world size reuses rank 0's RNG for new ranks (exact only with the same size)
            set_rng_state(ckpt.rng.get(self.rank, ckpt.rng[0]))
        return {"rank": self.rank, "backend": backend, "device": str(self.device), "step": self.trainer.step,
                "iteration": getattr(self.trainer, "iteration", 0), "trainable": self.eff.describe(),
                "trainable_numel": self.eff.trainable, "precision": precision}

    def _efficient(self, model, ckpt):
        """LoRA / frozen layers / special-token rows (``learner.*``, ``learner.efficient``), and a
        parameter-efficient checkpoint's trainable tensors loaded on top of its base."""
        lc = self.cfg.learner
        eff = E.prepare(model, lc, E.policy_special_ids(self.tokenizer, self.cfg), seed=self.cfg.run.seed)
        base = ckpt.base if ckpt else None
        if ckpt is not None and (base is not None) != E.is_efficient(lc):
            raise ValueError(f"{ckpt.path} was written by a {'parameter-efficient' if base is not None else 'full'}"
                             " learner; resume it with the same learner.lora / learner.freeze_layers settings")
        # the base's digest now, while this worker's copy surely exists (rank 0's checkpoints record it)
        self._base_sha = E.folder_digest(self.base_dir) if base or (self.rank == 0 and E.is_efficient(lc)) else None
        if base is not None:  # ckpt.trainable_state(), checked against this worker's copy of the base
            if self._base_sha != base["sha256"]:
                raise FileNotFoundError(f"{ckpt.path}: its base model {base['path']} is missing or has changed since "
                                        "the checkpoint was written (its weights' sha256 differs)")
            from safetensors.torch import load_file

            from learner.checkpoint import TRAINABLE

            E.load_trainable(model, load_file(ckpt.path / TRAINABLE))
        return eff

    def track_allreduce(self) -> None:
        """Count the gradient elements DDP all-reduces (a comm hook around the default all-reduce); call before the
        first step. ``allreduced_numel`` reads the running total."""
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self.allreduced = 0

        def hook(state, bucket):
            self.allreduced += bucket.buffer().numel()
            return allreduce_hook(state, bucket)

        self.trainer.net.register_comm_hook(None, hook)

    def allreduced_numel(self) -> int:
        return self.allreduced

    def _to_device(self, batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        return [{k: v.to(self.device) for k, v in b.items()} for b in batches]

    def train_step(self, batches: list[dict[str, torch.Tensor]], global_tokens: int) -> dict[str, float]:
        return self.trainer.train_step(self._to_device(batches), global_tokens)

    def grpo_update(self, parts: list[list[dict[str, torch.Tensor]]], part_tokens: list[int]) -> dict[str, float]:
        return self.trainer.update([self._to_device(p) for p in parts], part_tokens, self.device)

    def weights_blob(self) -> bytes:
        """The policy as one safetensors blob for the rollout workers (``rollout.weight_sync``)."""
        from rollout.weight_sync import serialise

        return serialise(E.sync_state(self.trainer.model))  # LoRA / special rows merged in

    def nccl_init(self, rollout_handles: list[Any], inference_ranks: int) -> None:
        """Rank 0 only: (re)build the NCCL weight-transfer group with the rollout workers' vLLM engines (GPU
        route, ``rollout.native_sync``)."""
        from rollout.native_sync import NCCLSender

        if E.is_efficient(self.cfg.learner):
            raise ValueError("rollout.weight_sync=nccl sends the raw parameters; with learner.lora / freeze_layers "
                             "use rollout.weight_sync=blob (merged weights)")
        self.nccl_close()
        self.sender = NCCLSender(self.trainer.model, rollout_handles, inference_ranks, *self.address())

    def nccl_send(self) -> None:
        self.sender.send()

    def nccl_close(self) -> None:
        if getattr(self, "sender", None) is not None:
            self.sender.close()
        self.sender = None

    def evaluate(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        return self.trainer.evaluate(self._to_device(batches)) if batches else {"nll_sum": 0.0, "tokens": 0}

    def weights_digest(self) -> str:
        h = hashlib.sha256()
        for name, p in sorted(self.trainer.model.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.trainer.model.state_dict().items()}

    def rng_state(self) -> dict[str, Any]:
        from learner.trainer import get_rng_state

        return get_rng_state()

    def save_checkpoint(self, root: str, rng_states: dict[int, dict], config_yaml: str, state: dict,
                        keep: int) -> str:
        from learner.checkpoint import save_checkpoint

        t = self.trainer
        trainable = None
        if E.is_efficient(self.cfg.learner):
            trainable = {"tensors": E.trainable_state(t.model), "base": self.origin or str(self.base_dir),
                         "base_sha256": self._base_sha}
        return str(save_checkpoint(Path(root), t.step, t.model, self.tokenizer, t.optimizer, t.scheduler,
                                   rng_states, config_yaml, {**t.state(), **state}, keep, trainable))

    def save_policy(self, out: str) -> str:
        """A normal HF folder with the merged weights (plus ``adapter/`` with LoRA or frozen layers)."""
        E.save_merged(self.trainer.model, self.tokenizer, Path(out), self.eff)
        return out

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def check_resources(lc: LearnerConfig) -> None:
    """Fail fast when the cluster cannot hold the group (a placement group would otherwise wait forever)."""
    have = ray.cluster_resources()
    need_cpu = lc.num_workers * lc.cpus_per_worker
    if need_cpu > have.get("CPU", 0):
        raise LearnerConfigError(
            f"learner.num_workers={lc.num_workers} x learner.cpus_per_worker={lc.cpus_per_worker} needs {need_cpu} "
            f"CPUs but the Ray cluster has {have.get('CPU', 0):g}; lower learner.num_workers")
    need_gpu = lc.num_workers * lc.gpus_per_worker
    if need_gpu > have.get("GPU", 0):
        raise LearnerConfigError(f"learner.gpus_per_worker={lc.gpus_per_worker} x {lc.num_workers} workers needs "
                                 f"{need_gpu:g} GPUs but the Ray cluster has {have.get('GPU', 0):g}")


class LearnerGroup:
    """Driver-side handle of the N LearnerWorkers (one placement-group bundle each)."""

    def __init__(self, cfg: AIGQConfig, model_dir: Path | ShippedFolder, total_steps: int, pad_id: int,
                 resume: Path | None = None, mode: str = "sft", ship: str | None = None):
        """``mode``: "sft" (IL-SFT steps) or "grpo" (IL-GRPO update rounds, ``total_steps`` = iterations). ``ship``:
        how workers get the start folder, the checkpoint and its base (``actors.shipping``; default
        ``run.ship_models``)."""
        lc = cfg.learner
        self.pad_id = pad_id
        if mode == "sft" and cfg.sft.global_batch < lc.num_workers:
            raise LearnerConfigError(f"sft.global_batch={cfg.sft.global_batch} is smaller than "
                                     f"learner.num_workers={lc.num_workers}")
        check_resources(lc)
        self.cfg, self.world_size = cfg, lc.num_workers
        bundle = {"CPU": lc.cpus_per_worker, **({"GPU": lc.gpus_per_worker} if lc.gpus_per_worker else {})}
        self.pg = placement_group([dict(bundle) for _ in range(lc.num_workers)], strategy=lc.placement_strategy)
        try:
            ray.get(self.pg.ready(), timeout=lc.ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.pg)
            raise LearnerConfigError(f"the learner placement group ({lc.num_workers} x {bundle}) was not ready "
                                     f"after {lc.ready_timeout_s:g} s: the cluster's free resources are taken") from None
        ship = ship or cfg.run.ship_models
        model_dir, base = maybe_ship(model_dir, ship), None
        if resume is not None:
            from learner.checkpoint import read_checkpoint

            ckpt_base = read_checkpoint(Path(resume)).base  # LoRA: the base folder it names, unless that is model_dir
            if ckpt_base and Path(ckpt_base["path"]).resolve() != Path(source(model_dir)).resolve():
                base = maybe_ship(ckpt_base["path"], ship)
        resume_spec = maybe_ship(resume, ship)
        cfg_json = cfg.model_dump_json()
        self.workers = [
            LearnerWorker.options(
                num_cpus=lc.cpus_per_worker, num_gpus=lc.gpus_per_worker,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
                runtime_env={"env_vars": {"OMP_NUM_THREADS": str(lc.cpus_per_worker)}},
            ).remote(i, lc.num_workers, cfg_json, model_dir, total_steps, mode, base)
            for i in range(lc.num_workers)
        ]
        addr, port = ray.get(self.workers[0].address.remote())
        self.info = ray.get([w.setup.remote(addr, port, resume_spec) for w in self.workers])
        self.step, self.iteration = self.info[0]["step"], self.info[0]["iteration"]

    def _shards(self, examples: list[Example]) -> list[list[dict[str, torch.Tensor]]]:
        """Worker r gets the r-th, (r+W)-th, … example by length, so shards cost the same and each micro-batch
        holds examples of similar length (little padding). The loss does not depend on the split: it is
        normalised by the global batch's target tokens."""
        order = np.argsort([len(e.ids) for e in examples], kind="stable")
        mb, pad = self.cfg.sft.micro_batch, self.pad_id
        return [micro_batches([examples[i] for i in order[r :: self.world_size]], mb, pad)
                for r in range(self.world_size)]

    def train_step(self, examples: list[Example]) -> dict[str, float]:
        """One optimizer step on a global batch; returns its mean target-token loss (Eq. 5) and counts."""
        if len(examples) < self.world_size:
            raise ValueError(f"a global batch of {len(examples)} cannot feed {self.world_size} workers")
        global_tokens = count_targets(examples)
        outs = ray.get([w.train_step.remote(s, global_tokens) for w, s in zip(self.workers, self._shards(examples),
                                                                               strict=True)])
        self.step += 1
        nll, tokens = sum(o["nll_sum"] for o in outs), sum(o["tokens"] for o in outs)
        return {"loss": nll / tokens, "target_tokens": tokens, "grad_norm": outs[0]["grad_norm"], "lr": outs[0]["lr"],
                "input_tokens": sum(len(e.ids) for e in examples), "samples": len(examples)}

    def grpo_update(self, examples: list[RLExample], iteration: int) -> dict[str, float]:
        """One IL-GRPO update round on a rollout batch: ``grpo.mini_batches`` optimizer steps, each a token mean over
        its mini-batch's generated tokens on all ranks. Mini-batches are a seeded shuffle (seed, iteration); within
        one, worker r takes the r-th, (r+W)-th, … rollout by length. Returns loss / entropy / clip figures."""
        g = self.cfg.grpo
        order = np.random.default_rng([self.cfg.run.seed, iteration]).permutation(len(examples))
        parts = [[examples[i] for i in chunk] for chunk in np.array_split(order, min(g.mini_batches, len(examples)))]
        part_tokens = [sum(sum(e.mask) for e in part) for part in parts]
        shards: list[list[list[dict[str, torch.Tensor]]]] = [[] for _ in range(self.world_size)]
        for part in parts:
            by_len = sorted(part, key=lambda e: len(e.ids))
            for r in range(self.world_size):
                mine = by_len[r :: self.world_size]
                shards[r].append([collate_rl(mine[i:i + g.micro_batch], self.pad_id)
                                  for i in range(0, len(mine), g.micro_batch)])
        outs = ray.get([w.grpo_update.remote(s, part_tokens) for w, s in zip(self.workers, shards, strict=True)])
        self.step += len(parts)
        self.iteration += 1
        total, n = sum(part_tokens), sum(o["tokens"] for o in outs)
        return {"train/pg_loss": sum(o["pg_loss"] for o in outs) / max(total, 1),
                "train/entropy": sum(o["entropy"] for o in outs) / max(total, 1),
                "train/kl": sum(o["kl"] for o in outs) / max(total, 1),
                "train/clip_high_frac": sum(o["clip_high"] for o in outs) / max(n, 1),
                "train/clip_low_frac": sum(o["clip_low"] for o in outs) / max(n, 1),
                "train/grad_norm": outs[0]["grad_norm"] / len(parts), "train/entropy_tau": outs[0]["tau"],
                "train/ent_coef": outs[0]["ent_coef"], "train/tokens": total, "train/rollouts": len(examples)}

    def weights_blob(self) -> ray.ObjectRef:
        """Rank 0's weights as a safetensors blob in the object store (rollout workers fetch it from there: the
        driver never copies the weights)."""
        return self.workers[0].weights_blob.remote()

    def nccl_init(self, rollout_handles: list[Any], inference_ranks: int) -> None:
        ray.get(self.workers[0].nccl_init.remote(rollout_handles, inference_ranks))

    def nccl_send(self) -> None:
        ray.get(self.workers[0].nccl_send.remote())

    def evaluate(self, examples: list[Example]) -> float:
        """Mean target-token NLL over ``examples``, split across the workers."""
        shards = self._shards(examples) if len(examples) >= self.world_size else [[]] * self.world_size
        outs = ray.get([w.evaluate.remote(s) for w, s in zip(self.workers, shards, strict=True)])
        tokens = sum(o["tokens"] for o in outs)
        return sum(o["nll_sum"] for o in outs) / max(tokens, 1)

    def weights_digests(self) -> list[str]:
        return ray.get([w.weights_digest.remote() for w in self.workers])

    def track_allreduce(self) -> None:
        ray.get([w.track_allreduce.remote() for w in self.workers])

    def allreduced_numels(self) -> list[int]:
        """Gradient elements each rank all-reduced since ``track_allreduce``."""
        return ray.get([w.allreduced_numel.remote() for w in self.workers])

    def weights(self, rank: int = 0) -> dict[str, torch.Tensor]:
        return ray.get(self.workers[rank].weights.remote())

    def save_checkpoint(self, root: Path, config_yaml: str, state: dict | None = None, keep: int = 2) -> Path:
        rng = dict(enumerate(ray.get([w.rng_state.remote() for w in self.workers])))
        return Path(ray.get(self.workers[0].save_checkpoint.remote(str(root), rng, config_yaml, state or {}, keep)))

    def save_policy(self, out: Path) -> Path:
        return Path(ray.get(self.workers[0].save_policy.remote(str(out))))

    def shutdown(self) -> None:
        try:
            ray.get([w.shutdown.remote() for w in self.workers], timeout=60)
        finally:
            for w in self.workers:
                ray.kill(w)
            remove_placement_group(self.pg)

