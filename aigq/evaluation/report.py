"""Table 1 of ``aigq eval``: row names and order of the paper, a markdown table (each figure with its bootstrap
interval, ``0.1230 [0.1000, 0.1500]``; then the cold-start slice's own table) and a bar plot with interval
whiskers."""

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
# (metric key, column header, format): Table 1's columns
COLUMNS = (("cate_hr", "Cate HR@{k}", "{:.4f}"), ("sem_sim", "Sem. Sim.", "{:.4f}"),
           ("query_hr", "Query HR@{k}", "{:.4f}"), ("unique_cates", "Unique Cates", "{:.1f}"),
           ("novelty", "Novelty", "{:.3f}"), ("cold_cate_hr", "Cold-start Cate HR@{k}", "{:.4f}"))


def columns(k: int, hr_ks: Sequence[int] = ()) -> list[tuple[str, str, str]]:
    """Table 1's columns plus Query HR@k for each ``eval.hr_ks`` value below K, MRR and the cold-start Query HR@K;
    the cold-start columns read the ``cold.*`` figures (which carry intervals)."""
    from aigq.evaluation.metrics import hr_cutoffs

    base = [c if c[0] != "cold_cate_hr" else ("cold.cate_hr", c[1], c[2]) for c in COLUMNS]
    extra = [(f"query_hr@{j}", f"Query HR@{j}", "{:.4f}") for j in hr_cutoffs(k, hr_ks) if j != k]
    return [*base[:3], *extra, ("mrr", "MRR", "{:.4f}"), *base[3:],
            ("cold.query_hr", "Cold-start Query HR@{k}", "{:.4f}")]


def cold_columns(k: int, hr_ks: Sequence[int] = ()) -> list[tuple[str, str, str]]:
    """The cold-start slice's table: every hit-rate figure over the cold-start rows."""
    from aigq.evaluation.metrics import hr_cutoffs

    return [("cold.cate_hr", "Cate HR@{k}", "{:.4f}"), ("cold.sem_sim", "Sem. Sim.", "{:.4f}"),
            *((f"cold.query_hr@{j}", f"Query HR@{j}", "{:.4f}") for j in hr_cutoffs(k, hr_ks)),
            ("cold.mrr", "MRR", "{:.4f}"), ("cold.novelty", "Novelty", "{:.3f}")]


def _value(metrics: dict[str, float], key: str) -> float:
    v = metrics.get(key, float("nan"))
    if key.startswith("cold.") and key not in metrics:  # rows cached by an older `aigq eval`
        v = metrics.get(key.replace("cold.", "cold_"), float("nan"))
    return float("nan") if v is None else float(v)


def cell(metrics: dict[str, float], key: str, fmt: str, sep: str = " ") -> str:
    """``fmt`` of the figure, then ``[lo, hi]`` when it has an interval; "–" when undefined."""
    v = _value(metrics, key)
    if math.isnan(v):
        return "–"
    lo, hi = metrics.get(f"{key}_lo"), metrics.get(f"{key}_hi")
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return fmt.format(v)
    return f"{fmt.format(v)}{sep}[{fmt.format(lo)}, {fmt.format(hi)}]"


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


def headers(k: int, hr_ks: Sequence[int] = (), cols: Sequence[tuple[str, str, str]] | None = None) -> list[str]:
    return ["Model", *(h.format(k=k) for _, h, _ in (cols or columns(k, hr_ks)))]


def cells(r: ArmResult, cols: Sequence[tuple[str, str, str]] = COLUMNS, sep: str = " ") -> list[str]:
    """One table row's cells (figure + interval, ``sep`` between them); a status instead when the arm did not run."""
    if r.status != "ok":
        return [r.status] + [""] * (len(cols) - 1)
    return [cell(r.metrics, key, fmt, sep) for key, _, fmt in cols]


def _table(results: Sequence[ArmResult], k: int, cols: Sequence[tuple[str, str, str]]) -> list[str]:
    ok = [r for r in results if r.status == "ok"]
    best = {key: max((v for r in ok if not math.isnan(v := _value(r.metrics, key))), default=None)
            for key, _, _ in cols}
    lines = ["| " + " | ".join(headers(k, cols=cols)) + " |", "|" + "---|" * (len(cols) + 1)]
    for r in results:
        row = cells(r, cols)
        if r.status == "ok":
            row = [f"**{c}**" if best[key] is not None and _value(r.metrics, key) == best[key] else c
                   for c, (key, _, _) in zip(row, cols, strict=True)]
        lines.append("| " + " | ".join([row_name(r.arm), *row]) + " |")
    return lines


def markdown(results: Sequence[ArmResult], k: int, user_days: int, cold_days: int, hr_ks: Sequence[int] = (),
             rows: str = "test user-days", confidence: float | None = None) -> str:
    """Table 1 (every figure with its interval when it has one), then the cold-start slice's table."""
    lines = _table(results, k, columns(k, hr_ks))
    lines.append("")
    ci = f"; [lo, hi] = {confidence:.0%} bootstrap interval over the rows" if confidence else ""
    lines.append(f"{user_days} {rows} ({cold_days} cold-start); best value per column in bold{ci}.")
    lines += ["", f"Cold-start slice ({cold_days} of the {user_days} {rows}):", ""]
    lines += _table(results, k, cold_columns(k, hr_ks))
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
        vals = [_value(r.metrics, key) for r in ok]
        err = [[max(0.0, v - r.metrics.get(f"{key}_lo", v)) for v, r in zip(vals, ok, strict=True)],
               [max(0.0, r.metrics.get(f"{key}_hi", v) - v) for v, r in zip(vals, ok, strict=True)]]
        ax.bar([i + j * width for i in range(len(ok))], vals, width, label=label, yerr=err, capsize=2)
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
