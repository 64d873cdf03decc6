"""Training and evaluation of the CTR reward model on HintQ exposures, day by day (paper Eq. 15).

``train_day(T)`` fits φ_T on the exposures of a window ending at day T and evaluates it on days T+1..T+eval_days:

* **warm start** (Eq. 15, φ_{T} ← Train(φ_{T−1}, D_T)): when day T−1's model exists, its weights are the starting
  point and the window is ``warm_window_days`` (default 1: D_T alone);
* **cold start**: otherwise a fresh model on ``cold_window_days`` days, its text embedding first pre-trained on
  the window's session co-occurrence (:func:`pretrain_text`).

Held-out metrics: AUC of the relevance score σ(r) (slot-free, what the reward uses), AUC and log-loss of the full
click probability σ(r)·e(slot), and the AUC of a popularity-only scorer (log search count of the query in the
training window) on the same impressions. The hidden click model is never read here (see
``aigq.evaluation.ctr_oracle`` for the test-only Spearman check).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from aigq.config import CTRConfig
from aigq.rewards.context import UserContext, contexts_of, exposure_impressions
from aigq.rewards.ctr import Batch, CTRModel, CTRScorer, Featurizer, examination, load_model, save_model
from aigq.rewards.ctr_categories import CategoryIndex

# ---------------------------------------------------------------- metrics (pure numpy)


def rankdata(x: Any) -> np.ndarray:
    """1-based ranks, ties get their average rank."""
    x = np.asarray(x, dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    cum = np.cumsum(counts)
    return (cum - (counts - 1) / 2.0)[inv]


def auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (Mann–Whitney U with tie-averaged ranks); NaN if only one class is present."""
    y = np.asarray(labels, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def log_loss(labels: Any, probs: Any, eps: float = 1e-7) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else float("nan")


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation (Pearson of tie-averaged ranks); NaN when either side is constant."""
    ra, rb = rankdata(a), rankdata(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


# ---------------------------------------------------------------- data


@dataclass
class ClickData:
    """Impressions of some days with their contexts (``imp.ctx`` indexes ``contexts``)."""

    imp: pl.DataFrame
    contexts: list[UserContext]
    days: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.imp)


def click_data(tables: dict[str, pl.DataFrame], start_date: str, days: list[int], cfg: CTRConfig) -> ClickData:
    imp, ctx = exposure_impressions(tables, start_date, days, cfg.history_len, cfg.history_days,
                                    list(cfg.behaviour_types))
    return ClickData(imp, contexts_of(ctx), days)


def popularity(tables: dict[str, pl.DataFrame], start_date: str, days: list[int]) -> dict[str, int]:
    """Query → number of searches on ``days`` (clicked hints become searches): the popularity-only scorer."""
    from aigq.data.schema import day_expr

    ev = tables["events"].filter((pl.col("type") == "search") & day_expr(pl.col("ts"), start_date).is_in(days))
    return dict(ev.group_by("query").len().drop_nulls("query").iter_rows())


def _batches(data: ClickData, feat: Featurizer, size: int, rng: np.random.Generator) -> list[tuple[Batch, torch.Tensor]]:
    """Featurise once into minibatches of whole exposures (their 3 impressions share one context)."""
    ctx_ids = data.imp["ctx"].unique().to_numpy()
    rng.shuffle(ctx_ids)
    per = max(1, size // 3)
    imp = data.imp.select("ctx", "query", "slot", "clicked")
    out = []
    for s in range(0, len(ctx_ids), per):
        part = imp.filter(pl.col("ctx").is_in(ctx_ids[s : s + per]))
        used, local = np.unique(part["ctx"].to_numpy(), return_inverse=True)
        b = feat.batch([data.contexts[i] for i in used], local, part["query"].to_list(), part["slot"].to_numpy())
        out.append((b, torch.from_numpy(part["clicked"].to_numpy().astype(np.float32))))
    return out


# ---------------------------------------------------------------- training


def _optimisers(model: CTRModel, cfg: CTRConfig, params: Any = None) -> list[torch.optim.Optimizer]:
    """SparseAdam for the (sparse-gradient) text embedding, Adam with weight decay for everything else."""
    sparse = list(model.text.parameters())
    dense = [p for p in (params or model.parameters()) if all(p is not q for q in sparse)]
    opts: list[torch.optim.Optimizer] = [torch.optim.SparseAdam(sparse, lr=cfg.lr)]
    if dense:
        opts.append(torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay))
    return opts


def session_pairs(tables: dict[str, pl.DataFrame], start_date: str, days: list[int], cfg: CTRConfig) -> pl.DataFrame:
    """(a, b) content pairs of two different behaviours of one session on ``days``, at most ``pretrain_pairs``."""
    from aigq.rewards.context import behaviours_table

    beh = behaviours_table(tables, list(cfg.behaviour_types), start_date, keep_session=True)
    beh = beh.filter(pl.col("day").is_in(days)).unique(["session_id", "content"]).select("session_id", "content")
    pairs = beh.join(beh, on="session_id", suffix="_b").filter(pl.col("content") != pl.col("content_b"))
    if len(pairs) > cfg.pretrain_pairs:
        pairs = pairs.sample(n=cfg.pretrain_pairs, seed=cfg.seed)
    return pairs.select(a="content", b="content_b")


def pretrain_text(model: CTRModel, pairs: pl.DataFrame, cfg: CTRConfig, log: Any = None) -> list[float]:
    """InfoNCE on session co-occurrence (temperature ``pretrain_temperature``, in-batch negatives) for the shared
    text embedding; returns the mean loss per epoch."""
    if len(pairs) < 2 or cfg.pretrain_epochs == 0:
        return []
    feat, rng = Featurizer(cfg), np.random.default_rng(cfg.seed)
    a = [feat.ids(x) for x in pairs["a"].to_list()]
    b = [feat.ids(x) for x in pairs["b"].to_list()]
    opt = torch.optim.SparseAdam(list(model.text.parameters()), lr=cfg.lr)
    nn = torch.nn.functional
    losses = []
    for ep in range(cfg.pretrain_epochs):
        perm, total, n = rng.permutation(len(a)), 0.0, 0
        for s in range(0, len(a), cfg.pretrain_batch):
            idx = perm[s : s + cfg.pretrain_batch]
            if len(idx) < 2:
                continue
            ba, bb = feat._bags([a[i] for i in idx]), feat._bags([b[i] for i in idx])
            ea = nn.normalize(model.text(ba[0], ba[1], per_sample_weights=ba[2]), dim=-1)
            eb = nn.normalize(model.text(bb[0], bb[1], per_sample_weights=bb[2]), dim=-1)
            loss = nn.cross_entropy(ea @ eb.T / cfg.pretrain_temperature, torch.arange(len(idx)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * len(idx), n + len(idx)
        losses.append(total / max(n, 1))
        if log:
            log(ep, losses[-1])
    return losses


def fit(model: CTRModel, data: ClickData, cfg: CTRConfig, epochs: int, log: Any = None,
        categories: CategoryIndex | None = None) -> list[float]:
    """Adam on the PAL click likelihood; returns the mean training loss per epoch."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    batches = _batches(data, Featurizer(cfg, categories if model.categories else None), cfg.batch_size, rng)
    opts = _optimisers(model, cfg)
    model.train()
    losses = []
    for ep in range(epochs):
        total, n = 0.0, 0
        for k in rng.permutation(len(batches)):
            b, y = batches[k]
            loss = model.click_loss(b, y)
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
            total, n = total + float(loss.detach()) * len(y), n + len(y)
        losses.append(total / max(n, 1))
        if log:
            log(ep, losses[-1])
    model.eval()
    return losses


def evaluate(model: CTRModel, cfg: CTRConfig, data: ClickData, pop: dict[str, int],
             categories: CategoryIndex | None = None) -> dict[str, float]:
    """Held-out AUC / log-loss of the model and AUC of the popularity-only scorer on the same impressions."""
    if len(data) == 0:
        return {"eval.impressions": 0}
    scorer = CTRScorer(model, cfg, categories)
    y = data.imp["clicked"].to_numpy()
    rel = scorer.score(data.contexts, data.imp["ctx"].to_numpy(), data.imp["query"].to_list())
    exam = np.asarray(examination(model))[data.imp["slot"].to_numpy()]
    pop_s = np.log1p(np.array([pop.get(q, 0) for q in data.imp["query"].to_list()], dtype=np.float64))
    m = {
        "eval.impressions": len(y),
        "eval.ctr": float(y.mean()),
        "eval.auc": auc(y, rel),
        "eval.auc_with_position": auc(y, rel * exam),
        "eval.logloss": log_loss(y, rel * exam),
        "eval.logloss_base_rate": log_loss(y, np.full(len(y), y.mean())),
        "eval.popularity_auc": auc(y, pop_s),
    }
    m["eval.auc_lift_vs_popularity"] = m["eval.auc"] - m["eval.popularity_auc"]
    return m


def model_dir(root: str | Path, day: int) -> Path:
    return Path(root) / f"day-{day:03d}"


@dataclass
class TrainResult:
    day: int
    folder: Path
    warm_start: Path | None
    train_days: list[int]
    eval_days: list[int]
    metrics: dict[str, float]
    losses: list[float]


def train_day(tables: dict[str, pl.DataFrame], start_date: str, n_days: int, day: int, cfg: CTRConfig,
              root: str | Path, cold: bool = False, log: Any = None) -> TrainResult:
    """Train φ_day (warm from ``root/day-(day-1)`` when present and not ``cold``), evaluate on the next days, save
    to ``root/day-<day>``."""
    if not 1 <= day <= n_days:
        raise ValueError(f"day {day} is outside the world's days 1..{n_days}")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)
    try:
        return _train_day(tables, start_date, n_days, day, cfg, root, cold, log)
    finally:
        torch.set_num_threads(threads)


def _train_day(tables: dict[str, pl.DataFrame], start_date: str, n_days: int, day: int, cfg: CTRConfig,
               root: str | Path, cold: bool, log: Any) -> TrainResult:
    prev = model_dir(root, day - 1)
    warm = None if cold or not (prev / "model.json").is_file() else prev
    window = cfg.warm_window_days if warm else cfg.cold_window_days
    train_days = list(range(max(1, day - window + 1), day + 1))
    eval_days = list(range(day + 1, min(day + cfg.eval_days, n_days) + 1))
    t0 = time.perf_counter()
    train = click_data(tables, start_date, train_days, cfg)
    if len(train) == 0:
        raise ValueError(f"no HintQ exposures on days {train_days[0]}..{train_days[-1]}: nothing to train on")
    if warm:
        model, prev_cfg, _ = load_model(warm)
        arch = {"hash_buckets", "dim", "hidden", "history_len"}
        if prev_cfg.model_dump(include=arch) != cfg.model_dump(include=arch) or model.categories != cfg.category_features:
            raise ValueError(f"{warm}: architecture differs from the config; retrain cold (--cold)")
    else:
        torch.manual_seed(cfg.seed)
        model = CTRModel(cfg.hash_buckets, cfg.dim, cfg.hidden, cfg.history_len, cfg.category_features)
        pre = pretrain_text(model, session_pairs(tables, start_date, train_days, cfg), cfg)
    t1 = time.perf_counter()
    # the category lookup is rebuilt from today's catalogue (new queries and items get their category)
    cats = CategoryIndex.from_tables(tables, cfg.category_threshold) if cfg.category_features else None
    losses = fit(model, train, cfg, cfg.epochs_warm if warm else cfg.epochs_cold, log, cats)
    t2 = time.perf_counter()
    metrics: dict[str, float] = {"train.impressions": len(train), "train.ctr": float(train.imp["clicked"].mean()),
                                 "train.final_loss": losses[-1], "train.warm_start": float(warm is not None)}
    if not warm and pre:
        metrics["pretrain.final_loss"] = pre[-1]
    if eval_days:
        held = click_data(tables, start_date, eval_days, cfg)
        metrics.update(evaluate(model, cfg, held, popularity(tables, start_date, train_days), cats))
    for s, e in enumerate(examination(model)):
        metrics[f"model.examination_slot{s}"] = e
    metrics.update({"seconds.data": t1 - t0, "seconds.train": t2 - t1, "seconds.eval": time.perf_counter() - t2})
    folder = save_model(model, cfg, model_dir(root, day), categories=cats, meta={
        "day": day, "train_days": train_days, "eval_days": eval_days, "warm_start": str(warm) if warm else None,
        "metrics": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}})
    return TrainResult(day, folder, warm, train_days, eval_days, metrics, losses)
