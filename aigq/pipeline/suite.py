"""``aigq eval --suite``: train the Table-1 policy variants that have no policy yet (``aigq.evaluation.suite`` says
which variants exist, their presets and where their policies live)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aigq.config import AIGQConfig, build_config
from aigq.evaluation.suite import ORDER, PLAIN, VARIANTS, _link, policy_dir, samples_dir, variant_config
from aigq.say import Say

Report = Callable[[str, AIGQConfig, dict[str, Any]], None]  # (arm, its config, the stage's figures)


def prepare_folders(cfg: AIGQConfig, arm: str, tracker, say: Say) -> AIGQConfig:
    """Make the variant folder (links to world and samples; plain samples built once) and return its config."""
    from aigq import pipeline

    vcfg = variant_config(cfg, arm)
    out = Path(vcfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _link(out / "world", cfg.world_dir())
    sdir = samples_dir(cfg, arm)
    if VARIANTS[arm].samples == "plain" and not (sdir / "meta.json").is_file():
        say(f"building plain samples (no re-ranking, no compression) → {sdir}")
        pcfg = build_config(cfg.model_dump(), [*PLAIN, f"run.output_dir={sdir.parent}"])
        pipeline.build_samples(pcfg, tracker, cfg.world_dir(), sdir)
    _link(out / "samples", sdir)
    return vcfg


def train_missing(cfg: AIGQConfig, tracker, arms: list[str] | None = None, say: Say = print,
                  report: Report | None = None) -> dict[str, str]:
    """Train every requested arm that has no policy yet, in dependency order (IL-SFT or IL-GRPO, each in its own
    MLflow run); ``report`` gets each trained arm's figures. Returns arm → status (present / trained / failed: …)."""
    from aigq.pipeline.train import GRPO_ERRORS, SFT_ERRORS, run_grpo, run_sft

    status: dict[str, str] = {}
    for arm in [a for a in ORDER if arms is None or a in arms]:
        if policy_dir(cfg, arm) is not None:
            status[arm] = "present"
            continue
        try:
            vcfg = prepare_folders(cfg, arm, tracker, say)
            say(f"training {arm} → {vcfg.run.output_dir}")
            with tracker.run(f"eval-suite/{arm}", vcfg, tags={"aigq.eval.arm": arm}):
                stage = run_sft if VARIANTS[arm].stage == "sft" else run_grpo
                figures = stage(vcfg, tracker, say=say)
            if report:
                report(arm, vcfg, figures)
            status[arm] = "trained"
        except (*SFT_ERRORS, *GRPO_ERRORS, FileExistsError) as exc:
            status[arm] = f"failed: {exc}" if str(exc) else "failed"
            say(f"[{arm}] {status[arm]}")
    return status
