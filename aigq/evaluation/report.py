"""Table 1 of ``aigq eval``: row names and order of the paper, a markdown table and a bar plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from aigq.evaluation.offline import ArmResult

ROW_NAMES = {
    "ebr": "EBR (two-tower)",
    "popularity": "Popularity",
    "co-click": "Co-click",
    "zero-shot": "Zero-shot SmolLM2-135M-Instruct",
    **{f"{v}-{s}": f"AIGQ-{v.capitalize()}_{s.upper()}"
       for v in ("direct", "think") for s in ("sft", "il-sft", "il-sft+grpo", "il-sft+il-grpo")},
}
# (metric key, column header, format)
COLUMNS = (("cate_hr", "Cate HR@{k}", "{:.4f}"), ("sem_sim", "Sem. Sim.", "{:.4f}"),
           ("query_hr", "Query HR@{k}", "{:.4f}"), ("unique_cates", "Unique Cates", "{:.1f}"),
           ("novelty", "Novelty", "{:.3f}"), ("cold_cate_hr", "Cold-start Cate HR@{k}", "{:.4f}"))


def row_name(arm: str) -> str:
    """``direct-il-sft`` → the paper's row name; ``<arm>@<folder>`` (a policy arm from an explicit folder) → the row
    name with the folder."""
    base, _, folder = arm.partition("@")
    return ROW_NAMES.get(base, base) + (f" ({folder})" if folder else "")


def metric_key(arm: str) -> str:
    """An arm as an MLflow metric-name part (MLflow rejects '+' and '@'): ``direct-il-sft__il-grpo``,
    ``direct-il-sft__il-grpo_at_<folder with / as .>``."""
    base, _, folder = arm.partition("@")
    key = base.replace("+", "__")
    return key + (f"_at_{folder.strip('/').replace('/', '.')}" if folder else "")


def headers(k: int) -> list[str]:
    return ["Model", *(h.format(k=k) for _, h, _ in COLUMNS)]


def cells(r: ArmResult) -> list[str]:
    if r.status != "ok":
        return [r.status] + [""] * (len(COLUMNS) - 1)
    out = []
    for key, _, fmt in COLUMNS:
        v = r.metrics.get(key, float("nan"))
        out.append("–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
    return out


def markdown(results: Sequence[ArmResult], k: int, user_days: int, cold_days: int) -> str:
    best = {key: max((r.metrics[key] for r in results if r.status == "ok" and key in r.metrics
                      and not math.isnan(r.metrics[key])), default=None) for key, _, _ in COLUMNS}
    lines = ["| " + " | ".join(headers(k)) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for r in results:
        row = cells(r)
        if r.status == "ok":
            row = [f"**{c}**" if best[key] is not None and r.metrics.get(key) == best[key] else c
                   for c, (key, _, _) in zip(row, COLUMNS, strict=True)]
        lines.append("| " + " | ".join([row_name(r.arm), *row]) + " |")
    lines.append("")
    lines.append(f"{user_days} test user-days ({cold_days} cold-start); best value per column in bold.")
    return "\n".join(lines) + "\n"


def bar_plot(results: Sequence[ArmResult], k: int, path: Path) -> Path | None:
    """Grouped bars (Cate HR@K, Query HR@K, Sem. Sim.) per evaluated arm; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        return None
    keys = (("cate_hr", f"Cate HR@{k}"), ("query_hr", f"Query HR@{k}"), ("sem_sim", "Sem. Sim."))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(ok)), 4))
    width = 0.8 / len(keys)
    for j, (key, label) in enumerate(keys):
        ax.bar([i + j * width for i in range(len(ok))], [r.metrics[key] for r in ok], width, label=label)
    ax.set_xticks([i + width for i in range(len(ok))], [row_name(r.arm).replace("AIGQ-", "") for r in ok],
                  rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("aigq eval (Table 1 metrics)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
