"""The policy variants of Table 1 and where their policies live; ``aigq eval --suite`` trains the missing ones
(``aigq.pipeline.suite``).

Each variant is one run of an existing stage (``aigq sft`` / ``aigq grpo``) under override presets, with its own
``run.output_dir = <eval.variants_dir>/<arm>/`` so it never overwrites the demo's ``<run.output_dir>/sft`` or
``grpo``. The variant folder links ``world`` to the main world and ``samples`` to the samples it trains on:

| arm | stage | presets | samples | starts from |
|---|---|---|---|---|
| direct-sft | sft | ``--ablation plain`` (no re-ranking, no compression) | plain | base model |
| direct-il-sft | sft | ``--ablation compress`` (= the demo's IL-SFT) | main | base model |
| direct-il-sft+grpo | grpo | ``grpo.algorithm=grpo`` (one sequence-level advantage) | main | direct-il-sft |
| direct-il-sft+il-grpo | grpo | ``grpo.algorithm=il-grpo`` | main | direct-il-sft |
| think-sft | sft | Think, no re-ranking, no compression, no reasoning | plain | base model |
| think-il-sft | sft | ``--ablation think`` (re-ranking, compression, reasoning) | main | base model |
| think-il-sft+grpo / +il-grpo | grpo | as Direct, ``grpo.variant=think``, trigger reward on | main | think-il-sft |

"plain" samples (``samples.rerank=false samples.compress=false``) are built once into
``<variants_dir>/_samples-plain/samples``; the policies trained on them are evaluated on that folder's test prompts
(same user-days and targets, plain prompt text). GRPO variants score against the CTR model of the last train day
(``eval.ctr_day``), linked into ``<variants_dir>/_ctr`` so no test-day model is picked up. ``direct-il-sft`` reuses
the demo's ``<run.output_dir>/sft/policy`` when it exists (same presets); the demo's IL-GRPO policy is not reused
(its CTR day and iteration count are the demo's, not the suite's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aigq.config import AIGQConfig, build_config

PLAIN = ["samples.rerank=false", "samples.compress=false"]


@dataclass(frozen=True)
class Variant:
    stage: str  # "sft" | "grpo"
    overrides: tuple[str, ...]
    samples: str = "main"  # "main" | "plain"
    init: str | None = None  # GRPO: the arm whose policy it starts from
    demo: str | None = None  # reuse <run.output_dir>/<demo> when present


_THINK_RL = ("grpo.variant=think", "sft.variant=think", "rewards.w_trigger=0.5")  # w_trigger: ([GAP], ours)
VARIANTS: dict[str, Variant] = {
    "direct-sft": Variant("sft", (*PLAIN, "sft.variant=direct"), "plain"),
    "direct-il-sft": Variant("sft", ("samples.rerank=true", "samples.compress=true", "sft.variant=direct"),
                             demo="sft/policy"),
    "direct-il-sft+grpo": Variant("grpo", ("grpo.algorithm=grpo", "grpo.variant=direct"), init="direct-il-sft"),
    "direct-il-sft+il-grpo": Variant("grpo", ("grpo.algorithm=il-grpo", "grpo.variant=direct"), init="direct-il-sft"),
    "think-sft": Variant("sft", (*PLAIN, "sft.variant=think", "sft.reasoning=false"), "plain"),
    "think-il-sft": Variant("sft", ("samples.rerank=true", "samples.compress=true", "sft.variant=think",
                                    "sft.reasoning=true")),
    "think-il-sft+grpo": Variant("grpo", ("grpo.algorithm=grpo", *_THINK_RL), init="think-il-sft"),
    "think-il-sft+il-grpo": Variant("grpo", ("grpo.algorithm=il-grpo", *_THINK_RL), init="think-il-sft"),
}
ORDER = list(VARIANTS)  # an init always comes before the GRPO variants that start from it


def variants_dir(cfg: AIGQConfig) -> Path:
    return cfg.variants_dir()


def variant_of(arm: str) -> str:
    """``think-il-sft`` → ``think`` (the output format the arm writes)."""
    return "think" if arm.startswith("think") else "direct"


def policy_dir(cfg: AIGQConfig, arm: str) -> Path | None:
    """The arm's policy folder, or None when it has not been trained."""
    v = VARIANTS[arm]
    own = variants_dir(cfg) / arm / v.stage / "policy"
    if (own / "config.json").is_file():
        return own
    if v.demo and (cfg.out_dir() / v.demo / "config.json").is_file():
        return cfg.out_dir() / v.demo
    return None


def samples_dir(cfg: AIGQConfig, arm: str) -> Path:
    """Where the arm's training samples (and so its test prompts) live."""
    if VARIANTS[arm].samples == "plain":
        return variants_dir(cfg) / "_samples-plain" / "samples"
    return cfg.samples_dir()


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() and link.resolve() == target.resolve():
        return
    if link.is_symlink():
        link.unlink()
    if link.exists():
        raise FileExistsError(f"{link} exists and is not a link to {target}; remove it or set eval.variants_dir")
    link.symlink_to(target.resolve(), target_is_directory=True)


def last_train_day(cfg: AIGQConfig) -> int:
    from aigq.data.schema import read_meta

    return int(read_meta(cfg.world_dir())["days"]) - cfg.samples.test_days


def ctr_dir(cfg: AIGQConfig) -> Path:
    """``<variants_dir>/_ctr/day-T`` linked to the main CTR root's day-T (T = eval.ctr_day or the last train day)."""
    from aigq.rewards.ctr_train import model_dir

    day = cfg.eval.ctr_day or last_train_day(cfg)
    src = model_dir(cfg.ctr_root(), day)
    if not src.is_dir():
        raise FileNotFoundError(f"no CTR model {src}: run `aigq train-ctr --day {day}` first")
    root = variants_dir(cfg) / "_ctr"
    root.mkdir(parents=True, exist_ok=True)
    _link(root / src.name, src)
    return root


def variant_config(cfg: AIGQConfig, arm: str) -> AIGQConfig:
    """The stage config of one variant: the eval config + the variant's presets + its own output folder."""
    v, e = VARIANTS[arm], cfg.eval
    extra = [*v.overrides, f"run.output_dir={variants_dir(cfg) / arm}", "sft.sample_prompts=0",
             "sft.register_as=null"]
    if v.stage == "sft" and e.variant_sft_steps:
        extra.append(f"sft.max_steps={e.variant_sft_steps}")
    if v.stage == "grpo":
        init = policy_dir(cfg, v.init) if v.init else None
        if init is None:
            raise FileNotFoundError(f"{arm} starts from {v.init}, which is not trained")
        extra += [f"grpo.init_policy={init.resolve()}", f"ctr.dir={ctr_dir(cfg).resolve()}"]
        if e.variant_grpo_iterations:
            extra.append(f"grpo.iterations={e.variant_grpo_iterations}")
        if variant_of(arm) == "think":
            extra.append(f"rollout.max_tokens={e.think_max_tokens}")
    return build_config(cfg.model_dump(), extra)
