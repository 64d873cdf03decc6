"""The training stages: IL-SFT (Eq. 5) and IL-GRPO (§3.5) on the actor system (``actors``), and the errors that
mean "bad input or configuration" (the CLI prints them as one line; anything else is a bug and keeps its traceback)."""

from __future__ import annotations

from actors.grpo_driver import grpo_dir, run_grpo
from actors.learner import LearnerConfigError
from actors.sft import run_sft, sft_dir
from aigq.models.factory import ModelNotFoundError
from learner.data import SampleSchemaError

# What a training stage raises for bad samples, a missing model or folder, or a config the cluster cannot run.
SFT_ERRORS: tuple[type[Exception], ...] = (SampleSchemaError, ModelNotFoundError, LearnerConfigError,
                                           FileNotFoundError, ValueError)
GRPO_ERRORS: tuple[type[Exception], ...] = (LearnerConfigError, FileNotFoundError, ValueError, RuntimeError)

__all__ = ["GRPO_ERRORS", "SFT_ERRORS", "grpo_dir", "run_grpo", "run_sft", "sft_dir"]
