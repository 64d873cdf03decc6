"""``aigq compare``: select MLflow runs and compare them (params that differ, final metrics, metric curves).

Pure logic over MLflow's client API (``MlflowClient.search_runs`` / ``get_metric_history``); no Ray. Runs are
selected by experiment name(s), tags (``key=value``, ANDed), an MLflow filter string and/or run ids; every condition
is ANDed, as in MLflow's own search syntax. The comparison is written as markdown + CSV (+ PNG plots, see
``aigq.compare_plots``) and, by the CLI, logged as artifacts of a new run tagged ``aigq.pipeline=compare``.

    client = MlflowClient(tracking_uri=uri)
    runs = select_runs(client, experiments=["aigq-tiny"], tags={"aigq.stage": "grpo"})
    cmp = compare(client, runs)
    files = write_comparison(client, cmp, Path("outputs/compare"))
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

COMPARE_TAG = ("aigq.pipeline", "compare")

# Final metrics shown by default (fnmatch patterns, case-sensitive, in this order): losses, IL-GRPO reward means and
# first/last/gain figures, greedy-eval rewards, offline eval metrics (HR@K, CTR-model AUC …), daily-loop figures
# (the loop's per-arm runs log pvr / ctr / uctr / share.<channel> with step = the simulated day).
DEFAULT_METRICS = ("train/loss", "eval/loss", "sft.eval_loss_*", "reward/*", "grpo.*_first", "grpo.*_last",
                   "grpo.*_gain", "eval/*", "eval.*", "*hr*", "*HR*", "pvr", "ctr", "uctr", "share.*", "*uctr*",
                   "*UCTR*", "loop.*", "ab.*")
# Metric curves plotted over steps (iterations, days) by default, when a run has at least two points of one.
DEFAULT_CURVES = ("reward/query.total", "reward/query.ctr", "reward/seq.total", "eval/query.total", "train/loss",
                  "eval/loss", "pvr", "ctr", "uctr")
MAX_DEFAULT_METRICS = 40  # when nothing matches the default patterns, show at most this many metrics


class CompareError(ValueError):
    """Bad selection input or nothing to compare; the message says what to fix."""


@dataclass
class RunRow:
    run_id: str
    name: str
    label: str  # unique column header: "<run name> (<7-char id>)"
    experiment: str
    stage: str
    status: str
    start_time: int  # ms since the epoch
    params: dict[str, str]
    metrics: dict[str, float]


@dataclass
class Comparison:
    runs: list[RunRow]
    params: list[tuple[str, list[str | None]]]  # only the params whose values differ between runs
    metrics: list[tuple[str, list[float | None]]]  # final (latest) value of each selected metric per run
    selection: str = ""
    curves: list[str] = field(default_factory=list)  # metric keys to plot over steps
    bars: list[str] = field(default_factory=list)  # HR@K-style eval metrics to plot as grouped bars

    @property
    def labels(self) -> list[str]:
        return [r.label for r in self.runs]


# ---------------------------------------------------------------- selection

def parse_tags(items: list[str] | None) -> dict[str, str]:
    """``["aigq.stage=grpo", "aigq.engine=vllm"]`` → dict; a missing ``=`` or an empty key is an error."""
    tags: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CompareError(f"bad --tag {item!r}: expected key=value, e.g. --tag aigq.pipeline=demo")
        if "`" in key:
            raise CompareError(f"bad --tag {item!r}: a tag key cannot contain a backtick")
        tags[key.strip()] = value.strip()
    return tags


def _quote(value: str) -> str:
    if "'" in value and '"' in value:
        raise CompareError(f"cannot match {value!r}: a value may contain single or double quotes, not both")
    return f'"{value}"' if "'" in value else f"'{value}'"


def build_filter(tags: dict[str, str], run_ids: list[str], user_filter: str | None) -> str:
    """One MLflow filter string: tag equalities, ``run_id IN (…)`` and the user's own filter, ANDed."""
    parts = [f"tags.`{k}` = {_quote(v)}" for k, v in tags.items()]
    if run_ids:
        parts.append("attributes.run_id IN (" + ", ".join(_quote(r) for r in run_ids) + ")")
    if user_filter and user_filter.strip():
        parts.append(user_filter.strip())
    return " AND ".join(parts)


def select_runs(client, experiments: list[str] | None = None, tags: dict[str, str] | None = None,
                filter_string: str | None = None, run_ids: list[str] | None = None, max_runs: int = 50,
                default_experiment: str | None = None) -> list[Any]:
    """The runs matching every given condition, oldest first. Experiments default to the run ids' experiments,
    else ``default_experiment``. Earlier ``aigq compare`` runs are left out unless the tags ask for them."""
    from mlflow.exceptions import MlflowException

    tags, run_ids = dict(tags or {}), list(dict.fromkeys(run_ids or []))
    exp_ids: dict[str, str] = {}
    for name in experiments or []:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            known = sorted(e.name for e in client.search_experiments())
            raise CompareError(f"unknown experiment {name!r}; this store has: {', '.join(known) or 'none'}")
        exp_ids[exp.experiment_id] = name
    for rid in run_ids:
        try:
            run = client.get_run(rid)
        except MlflowException:
            raise CompareError(f"no run with id {rid!r} in this tracking store") from None
        if not experiments:
            exp_ids.setdefault(run.info.experiment_id, run.info.experiment_id)
    if not exp_ids:
        exp = client.get_experiment_by_name(default_experiment) if default_experiment else None
        if exp is None:
            raise CompareError(f"no experiment {default_experiment!r} in this tracking store; name one with "
                               "--experiment (or select --run ids)")
        exp_ids[exp.experiment_id] = exp.name
    filt = build_filter(tags, run_ids, filter_string)
    try:
        runs = client.search_runs(list(exp_ids), filter_string=filt, max_results=max_runs,
                                  order_by=["attributes.start_time DESC"])
    except MlflowException as exc:
        raise CompareError(f"bad filter {filt!r}: {exc.message}") from None
    if COMPARE_TAG[0] not in tags:
        runs = [r for r in runs if r.data.tags.get(COMPARE_TAG[0]) != COMPARE_TAG[1]]
    if not runs:
        raise CompareError(f"no runs matched (experiments: {', '.join(map(str, exp_ids.values()))}; "
                           f"filter: {filt or 'none'})")
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


# ---------------------------------------------------------------- comparison

def _rows(client, runs: list[Any]) -> list[RunRow]:
    names: dict[str, str] = {}
    rows = []
    for r in runs:
        eid = r.info.experiment_id
        if eid not in names:
            exp = client.get_experiment(eid)
            names[eid] = exp.name if exp else eid
        name = r.info.run_name or r.data.tags.get("mlflow.runName", "")
        rows.append(RunRow(run_id=r.info.run_id, name=name, label=f"{name} ({r.info.run_id[:7]})",
                           experiment=names[eid], stage=r.data.tags.get("aigq.stage", ""), status=r.info.status,
                           start_time=r.info.start_time or 0, params=dict(r.data.params),
                           metrics=dict(r.data.metrics)))
    return rows


def differing_params(rows: list[RunRow]) -> list[tuple[str, list[str | None]]]:
    """Params whose value (or presence) differs between the runs, by key."""
    keys = sorted({k for r in rows for k in r.params})
    out = []
    for k in keys:
        vals = [r.params.get(k) for r in rows]
        if len(set(vals)) > 1:
            out.append((k, vals))
    return out


def select_metrics(keys: list[str], patterns: tuple[str, ...] | list[str] | None) -> list[str]:
    """Metric keys matching the patterns, in pattern order then key order. Without patterns, the defaults; when
    those match nothing, the first ``MAX_DEFAULT_METRICS`` keys."""
    pats = list(patterns) if patterns else list(DEFAULT_METRICS)
    chosen: list[str] = []
    for p in pats:
        chosen += [k for k in sorted(keys) if fnmatchcase(k, p) and k not in chosen]
    if not chosen and not patterns:
        chosen = sorted(keys)[:MAX_DEFAULT_METRICS]
    return chosen


def hr_metrics(keys: list[str]) -> list[str]:
    """Offline-eval hit-rate metrics (``eval.*`` keys containing "hr", any case) for the HR@K bar plot."""
    return sorted(k for k in keys if k.startswith("eval.") and "hr" in k.lower())


def compare(client, runs: list[Any], metric_patterns: list[str] | None = None, curves: list[str] | None = None,
            selection: str = "") -> Comparison:
    """Build the comparison of ``runs`` (as returned by ``select_runs``)."""
    rows = _rows(client, runs)
    all_keys = sorted({k for r in rows for k in r.metrics})
    metrics = [(k, [r.metrics.get(k) for r in rows]) for k in select_metrics(all_keys, metric_patterns)]
    if metric_patterns and not metrics:
        raise CompareError(f"no metric of the selected runs matches {', '.join(metric_patterns)}")
    curve_keys = []
    for p in curves or DEFAULT_CURVES:
        curve_keys += [k for k in all_keys if fnmatchcase(k, p) and k not in curve_keys]
    return Comparison(runs=rows, params=differing_params(rows), metrics=metrics, selection=selection,
                      curves=curve_keys, bars=hr_metrics(all_keys))


def histories(client, cmp: Comparison) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{metric: {run label: [(step, value), …]}}`` for the comparison's curve keys; keys with fewer than two
    points in every run are dropped (nothing to draw)."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for key in cmp.curves:
        per_run = {}
        for r in cmp.runs:
            if key in r.metrics:
                pts = sorted((m.step, m.value) for m in client.get_metric_history(r.run_id, key))
                per_run[r.label] = pts
        if any(len(p) >= 2 for p in per_run.values()):
            out[key] = per_run
    return out


# ---------------------------------------------------------------- output

def fmt(v: Any, width: int | None = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        s = f"{v:,.0f}" if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    else:
        s = str(v)
    return s if width is None or len(s) <= width else s[: width - 1] + "…"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|").replace("\n", " ") for c in row] for row in [header, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
    return "\n".join(lines)


def to_markdown(cmp: Comparison, images: dict[str, str] | None = None) -> str:
    import datetime as dt

    parts = ["# AIGQ run comparison", ""]
    if cmp.selection:
        parts += [f"Selection: `{cmp.selection}`", ""]
    runs = [[r.label, r.run_id, r.experiment, r.stage or "—", r.status,
             dt.datetime.fromtimestamp(r.start_time / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")]
            for r in cmp.runs]
    parts += ["## Runs", "", _md_table(["run", "run id", "experiment", "stage", "status", "started"], runs), ""]
    parts += ["## Final metrics", ""]
    parts += [_md_table(["metric", *cmp.labels], [[k, *(fmt(v) for v in vals)] for k, vals in cmp.metrics])
              if cmp.metrics else "(no metrics)", ""]
    parts += ["## Params that differ", ""]
    parts += [_md_table(["param", *cmp.labels], [[k, *(fmt(v, 80) for v in vals)] for k, vals in cmp.params])
              if cmp.params else "(all params are equal)", ""]
    for title, name in (images or {}).items():
        parts += [f"## {title}", "", f"![{title}]({name})", ""]
    return "\n".join(parts)


def write_csv(cmp: Comparison, path: Path) -> Path:
    """One row per metric / differing param, one column per run (full values, no truncation)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["kind", "key", *[r.run_id for r in cmp.runs]])
        w.writerow(["run", "label", *cmp.labels])
        for k, vals in cmp.metrics:
            w.writerow(["metric", k, *("" if v is None else repr(float(v)) for v in vals)])
        for k, vals in cmp.params:
            w.writerow(["param", k, *("" if v is None else v for v in vals)])
    return path


def write_comparison(client, cmp: Comparison, out: Path) -> dict[str, Path]:
    """Write ``comparison.md``, ``comparison.csv``, ``curves.png`` (when a curve has ≥ 2 points) and ``hr_at_k.png``
    (when HR@K eval metrics exist) into ``out``; returns ``{kind: path}``."""
    from aigq.compare_plots import plot_bars, plot_curves

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    images: dict[str, str] = {}
    hist = histories(client, cmp)
    if hist:
        files["curves"] = plot_curves(hist, out / "curves.png")
        images["Metric curves over steps"] = "curves.png"
    if cmp.bars:
        values = {k: [r.metrics.get(k) for r in cmp.runs] for k in cmp.bars}
        files["hr_at_k"] = plot_bars(values, cmp.labels, out / "hr_at_k.png")
        images["HR@K"] = "hr_at_k.png"
    files["csv"] = write_csv(cmp, out / "comparison.csv")
    md = out / "comparison.md"
    md.write_text(to_markdown(cmp, images), encoding="utf-8")
    files["markdown"] = md
    return files
