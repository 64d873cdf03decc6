"""Checkpoints: written atomically (a temporary folder renamed into place), never pickled.

    <root>/step-000120/
        model/              Hugging Face folder: config.json, model.safetensors, tokenizer files
        optimizer.pt        optimizer state_dict (tensors; loaded with weights_only=True)
        scheduler.json      LR scheduler state
        trainer_state.json  step, total steps, world size, last metrics
        rng.json            Python / NumPy / torch RNG states of every rank
        config.yaml         the resolved run configuration
    <root>/latest           name of the newest complete checkpoint

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


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(root: Path, step: int, model, tokenizer, optimizer: torch.optim.Optimizer, scheduler,
                    rng_states: dict[int, dict[str, Any]], config_yaml: str, state: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically, point ``latest`` at it, keep the newest ``keep``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
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
        return self.path / "model"

    @property
    def step(self) -> int:
        return int(self.state["step"])


def read_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    missing = [f for f in ("model", "optimizer.pt", "scheduler.json", "trainer_state.json", "rng.json")
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
