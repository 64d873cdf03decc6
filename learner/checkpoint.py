"""Checkpoints: written atomically (a temporary folder renamed into place), never pickled.

    <root>/step-000120/
        model/              Hugging Face folder: config.json, model.safetensors, tokenizer files
        optimizer.pt        optimizer state_dict (tensors; loaded with weights_only=True)
        scheduler.json      LR scheduler state
        trainer_state.json  step, total steps, world size, last metrics
        rng.json            Python / NumPy / torch RNG states of every rank
        config.yaml         the resolved run configuration
    <root>/latest           name of the newest complete checkpoint

With LoRA or frozen layers (``learner.efficient``) a checkpoint holds only what trains, instead of ``model/``:

        trainable.safetensors   the trainable tensors (adapters, special-row deltas, unfrozen layers) by name
        base.json               the base model folder they apply to (with its tokenizer) and its weights' sha256

``Checkpoint.model_dir`` is then that base folder; resuming loads it, sets the learner up the same way and loads the
trainable tensors (a changed base is refused: its digest must match).

A crash mid-write leaves only a ``.tmp-*`` folder, which is ignored and cleaned up by the next save.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

LATEST = "latest"
TRAINABLE, BASE = "trainable.safetensors", "base.json"  # parameter-efficient checkpoints


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(root: Path, step: int, model, tokenizer, optimizer: torch.optim.Optimizer, scheduler,
                    rng_states: dict[int, dict[str, Any]], config_yaml: str, state: dict[str, Any],
                    keep: int = 2, trainable: dict[str, Any] | None = None) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically, point ``latest`` at it, keep the newest ``keep``.
    ``trainable``: ``{"tensors": name → tensor, "base": folder, "base_sha256": digest}`` for a parameter-efficient
    learner (written instead of ``model/``; ``model`` and ``tokenizer`` are then unused)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    if trainable is not None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in trainable["tensors"].items()},
                  tmp / TRAINABLE)
        (tmp / BASE).write_text(json.dumps({"path": str(Path(trainable["base"]).resolve()),
                                            "sha256": trainable["base_sha256"]}, indent=2))
    else:
        model.save_pretrained(tmp / "model")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
    (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    (tmp / "rng.json").write_text(json.dumps({str(r): s for r, s in rng_states.items()}))
    (tmp / "config.yaml").write_text(config_yaml)
    if final.exists():  # re-saving a step: move the old one aside first (rename is atomic, rmtree is not)
        old = root / f".tmp-old-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    pointer = root / f".tmp-latest-{uuid.uuid4().hex[:8]}"
    pointer.write_text(final.name)
    os.replace(pointer, root / LATEST)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file() and (root / pointer.read_text().strip()).is_dir():
        return root / pointer.read_text().strip()
    steps = sorted(root.glob("step-*")) if root.is_dir() else []
    return steps[-1] if steps else None


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]
    rng: dict[int, dict[str, Any]]

    @property
    def model_dir(self) -> Path:
        """The full model folder; for a parameter-efficient checkpoint, the base folder its tensors apply to."""
        if self.base is not None:
            return Path(self.base["path"])
        return self.path / "model"

    @property
    def base(self) -> dict[str, str] | None:
        """``{"path", "sha256"}`` of a parameter-efficient checkpoint's base; None for a full-model checkpoint."""
        f = self.path / BASE
        return json.loads(f.read_text()) if f.is_file() else None

    def trainable_state(self) -> dict[str, torch.Tensor] | None:
        """The trainable tensors of a parameter-efficient checkpoint (None for a full-model checkpoint), after
        checking that the base folder is still the one they were trained on."""
        base = self.base
        if base is None:
            return None
        from safetensors.torch import load_file

        from learner.efficient import folder_digest

        if not Path(base["path"]).is_dir() or folder_digest(Path(base["path"])) != base["sha256"]:
            raise FileNotFoundError(f"{self.path}: its base model {base['path']} is missing or has changed since "
                                    "the checkpoint was written (its weights' sha256 differs)")
        return load_file(self.path / TRAINABLE)

    @property
    def step(self) -> int:
        return int(self.state["step"])


def read_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    weights = (TRAINABLE, BASE) if (path / BASE).exists() else ("model",)
    missing = [f for f in (*weights, "optimizer.pt", "scheduler.json", "trainer_state.json", "rng.json")
               if not (path / f).exists()]
    if missing:
        raise FileNotFoundError(f"{path}: not a complete checkpoint (missing {', '.join(missing)})")
    rng = {int(r): s for r, s in json.loads((path / "rng.json").read_text()).items()}
    return Checkpoint(path, json.loads((path / "trainer_state.json").read_text()), rng)


def restore_trainer(trainer, ckpt: Checkpoint) -> None:
    """Optimizer, scheduler and step of ``trainer`` from ``ckpt`` (its model was loaded from ``ckpt.model_dir``)."""
    trainer.optimizer.load_state_dict(torch.load(ckpt.path / "optimizer.pt", weights_only=True))
    trainer.scheduler.load_state_dict(json.loads((ckpt.path / "scheduler.json").read_text()))
    trainer.step = ckpt.step
