"""Training and evaluation of the CTR reward model, day by day (paper Eq. 15).

Two objectives (``ctr.objective``, resolved once by :func:`resolve_objective`: ``auto`` → ``clicks`` when the world's
``exposures`` table has rows, else ``next_search``):

* **clicks**: p(click | context, shown query) on HintQ exposures (``context.exposure_impressions``), PAL position
  bias over the 3 slots;
* **next_search** (issue 16: a plain search log, no exposure log): p(user searches q next | context) on each
  anchor's next searches (``aigq.data.next_search``: the AIGQ-Direct labels' anchors and horizon labels) against
  ``ctr.neg_popular`` popularity-sampled and ``ctr.neg_hard`` co-occurrence hard negatives per positive
  (``context.next_search_impressions``), all at slot 0 (e(0) = 1: the same likelihood is plain log-loss). With
  ``ctr.success_rate`` the window's smoothed per-query search success rates are saved beside the model
  (``ctr.SuccessRates``) and multiply every score.

Training rows (exposures, anchors, their labels and contexts, the negatives' pool, the pre-training pairs, the
popularity scorer) lie strictly before each user's train cut (``aigq.data.holdout.train_cuts``, :func:`ctr_cuts`):
a held-out last query is never learnt from. Evaluation on days T+1.. has no cut.

``train_day(T)`` fits φ_T on a window ending at day T and evaluates it on days T+1..T+eval_days:

* **warm start** (Eq. 15, φ_{T} ← Train(φ_{T−1}, D_T)): when day T−1's model exists, its weights are the starting
  point and the window is ``warm_window_days`` (default 1: D_T alone);
* **cold start**: otherwise a fresh model on ``cold_window_days`` days, its text embedding first pre-trained on
  the window's session co-occurrence (:func:`pretrain_text`).

Held-out metrics: AUC of the relevance score σ(r) (slot-free, what the reward uses), AUC and log-loss of the full
click probability σ(r)·e(slot), and the AUC of a popularity-only scorer (log search count of the query in the
training window) on the same impressions (next_search: the held-out days' next searches vs negatives sampled from
the training window, also split by negative kind: ``eval.auc_vs_hard`` / ``eval.auc_vs_popular``). The hidden
click model is never read here (see ``aigq.evaluation.ctr_oracle`` for the test-only Spearman check).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from aigq.config import CTRConfig, SamplesConfig
from aigq.data import next_search as N
from aigq.data.holdout import before_cut, train_cuts
from aigq.data.schema import day_expr
from aigq.rewards.context import (
    NegativePool,
    UserContext,
    contexts_of,
    exposure_impressions,
    negative_pool,
    next_search_impressions,
)
from aigq.rewards.ctr import (
    Batch,
    CTRModel,
    CTRScorer,
    Featurizer,
    SuccessRates,
    examination,
    load_model,
    save_model,
)
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


def resolve_objective(cfg: CTRConfig, tables: dict[str, pl.DataFrame]) -> str:
    """``ctr.objective``; ``auto`` → ``clicks`` when the world's ``exposures`` table has rows, else ``next_search``."""
    if cfg.objective != "auto":
        return cfg.objective
    ex = tables.get("exposures")
    return "clicks" if ex is not None and ex.height else "next_search"


def ctr_cuts(tables: dict[str, pl.DataFrame], start_date: str, n_days: int, day: int,
             samples: SamplesConfig) -> pl.DataFrame:
    """Train cuts of φ_day (``holdout.train_cuts``) from the sample split: the day cut is 00:00 of the first test day
    ``n_days − samples.test_days + 1`` (as the samples'), moved to day+1 when φ is trained on a test-split day on
    purpose (the daily loop); with ``samples.last_query_holdout`` each user's held-out last query cuts earlier."""
    first_test_day = n_days - samples.test_days + 1
    return train_cuts(tables["events"], start_date, max(first_test_day, day + 1), samples.last_query_holdout)


def click_data(tables: dict[str, pl.DataFrame], start_date: str, days: list[int], cfg: CTRConfig,
               cuts: pl.DataFrame | None = None) -> ClickData:
    """HintQ exposures of ``days`` (strictly before ``cuts`` when given)."""
    imp, ctx = exposure_impressions(tables, start_date, days, cfg.history_len, cfg.history_days,
                                    list(cfg.behaviour_types), cuts)
    return ClickData(imp, contexts_of(ctx), days)


def next_search_data(tables: dict[str, pl.DataFrame], start_date: str, days: list[int], cfg: CTRConfig,
                     samples: SamplesConfig, cuts: pl.DataFrame, pool: NegativePool, seed: int,
                     searches: pl.DataFrame | None = None) -> ClickData:
    """Next searches of ``days`` (anchors ``samples.anchor``, labels ``samples.label_horizon_days``, before ``cuts``)
    against negatives from ``pool`` (the training window's), deterministic for ``seed``."""
    imp, ctx = next_search_impressions(
        tables, start_date, days, cfg.history_len, cfg.history_days, list(cfg.behaviour_types), cuts=cuts, pool=pool,
        anchor=samples.anchor, horizon_days=samples.label_horizon_days, neg_popular=cfg.neg_popular,
        neg_hard=cfg.neg_hard, seed=seed, searches=searches)
    return ClickData(imp, contexts_of(ctx), days)


def popularity(tables: dict[str, pl.DataFrame], start_date: str, days: list[int],
               cuts: pl.DataFrame | None = None) -> dict[str, int]:
    """Query → number of searches on ``days`` (strictly before ``cuts`` when given; clicked hints become searches):
    the popularity-only scorer."""
    ev = tables["events"].filter((pl.col("type") == "search") & day_expr(pl.col("ts"), start_date).is_in(days))
    if cuts is not None:
        ev = before_cut(ev, cuts)
    return dict(ev.group_by("query").len().drop_nulls("query").iter_rows())


def _batches(data: ClickData, feat: Featurizer, size: int, rng: np.random.Generator) -> list[tuple[Batch, torch.Tensor]]:
    """Featurise once into minibatches of whole contexts (an exposure's 3 impressions, an anchor's positives and
    negatives share one), about ``size`` rows each."""
    ctx_ids = data.imp["ctx"].unique().sort().to_numpy().copy()
    rng.shuffle(ctx_ids)
    per = max(1, int(size * len(ctx_ids) / max(len(data.imp), 1)))
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


def session_pairs(tables: dict[str, pl.DataFrame], start_date: str, days: list[int], cfg: CTRConfig,
                  cuts: pl.DataFrame | None = None) -> pl.DataFrame:
    """(a, b) content pairs of two different behaviours of one session on ``days`` (strictly before ``cuts`` when
    given), at most ``pretrain_pairs``."""
    from aigq.rewards.context import behaviours_table

    beh = behaviours_table(tables, list(cfg.behaviour_types), start_date, keep_session=True)
    beh = beh.filter(pl.col("day").is_in(days))
    if cuts is not None:
        beh = before_cut(beh, cuts)
    beh = beh.unique(["session_id", "content"]).select("session_id", "content")
    pairs = (beh.join(beh, on="session_id", suffix="_b").filter(pl.col("content") != pl.col("content_b"))
             .sort("session_id", "content", "content_b"))  # deterministic order for the seeded sample
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
             categories: CategoryIndex | None = None, success: SuccessRates | None = None) -> dict[str, float]:
    """Held-out AUC / log-loss of the model and AUC of the popularity-only scorer on the same impressions (+ the
    AUC of the model × success rate, with ``success``)."""
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
    if success is not None:
        m["eval.auc_with_success"] = auc(y, rel * success(data.imp["query"].to_list()))
    if "source" in data.imp.columns:  # next_search: positives against each kind of negative alone
        src = data.imp["source"].to_numpy()
        for kind in ("hard", "popular"):
            keep = (src == kind) | y
            m[f"eval.auc_vs_{kind}"] = auc(y[keep], rel[keep])
            m[f"eval.popularity_auc_vs_{kind}"] = auc(y[keep], pop_s[keep])
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
    objective: str = "clicks"


def train_day(tables: dict[str, pl.DataFrame], start_date: str, n_days: int, day: int, cfg: CTRConfig,
              root: str | Path, cold: bool = False, log: Any = None, cuts: pl.DataFrame | None = None,
              samples: SamplesConfig | None = None) -> TrainResult:
    """Train φ_day (warm from ``root/day-(day-1)`` when present and not ``cold``), evaluate on the next days, save
    to ``root/day-<day>``. ``cuts``: the train cuts (:func:`ctr_cuts`; None = 00:00 of day+1 for every user, no
    held-out query); ``samples``: next_search's anchors and label horizon (None = the defaults)."""
    if not 1 <= day <= n_days:
        raise ValueError(f"day {day} is outside the world's days 1..{n_days}")
    if cuts is None:
        cuts = train_cuts(tables["events"], start_date, day + 1, False)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)
    try:
        return _train_day(tables, start_date, n_days, day, cfg, root, cold, log, cuts, samples or SamplesConfig())
    finally:
        torch.set_num_threads(threads)


def _train_day(tables: dict[str, pl.DataFrame], start_date: str, n_days: int, day: int, cfg: CTRConfig,
               root: str | Path, cold: bool, log: Any, cuts: pl.DataFrame, samples: SamplesConfig) -> TrainResult:
    objective = resolve_objective(cfg, tables)
    cfg = cfg.model_copy(update={"objective": objective})
    prev = model_dir(root, day - 1)
    warm = None if cold or not (prev / "model.json").is_file() else prev
    if warm:
        prev_objective = json.loads((warm / "model.json").read_text()).get("meta", {}).get("objective", "clicks")
        if prev_objective != objective:
            raise ValueError(f"{warm}: objective {prev_objective} differs from {objective}; retrain cold (--cold)")
    window = cfg.warm_window_days if warm else cfg.cold_window_days
    train_days = list(range(max(1, day - window + 1), day + 1))
    eval_days = list(range(day + 1, min(day + cfg.eval_days, n_days) + 1))
    t0 = time.perf_counter()
    span = f"days {train_days[0]}..{train_days[-1]}"
    success = None
    if objective == "clicks":
        train = click_data(tables, start_date, train_days, cfg, cuts)
        if len(train) == 0:
            raise ValueError(f"no HintQ exposures on {span}: nothing to train on (objective clicks; a search-only "
                             "log trains with ctr.objective=next_search)")
        pop = popularity(tables, start_date, train_days, cuts)
    else:
        s = N.searches_with_success(tables["events"])
        pool = negative_pool(s, start_date, train_days, cuts, cfg.neg_popular_power)
        train = next_search_data(tables, start_date, train_days, cfg, samples, cuts, pool, cfg.seed, s)
        if not train.imp["clicked"].any():
            raise ValueError(f"no searches with a next search on {span} before the train cuts: nothing to train on "
                             "(objective next_search)")
        if train.imp["clicked"].all():
            raise ValueError(f"no negatives to sample on {span}: the window holds a single query (objective "
                             "next_search)")
        pop = pool.counts()
        if cfg.success_rate:
            window_s = before_cut(s.filter(day_expr(pl.col("ts"), start_date).is_in(train_days)), cuts)
            success = SuccessRates.from_searches(window_s, cfg.success_prior)
    if warm:
        model, prev_cfg, _ = load_model(warm)
        arch = {"hash_buckets", "dim", "hidden", "history_len"}
        if prev_cfg.model_dump(include=arch) != cfg.model_dump(include=arch) or model.categories != cfg.category_features:
            raise ValueError(f"{warm}: architecture differs from the config; retrain cold (--cold)")
    else:
        torch.manual_seed(cfg.seed)
        model = CTRModel(cfg.hash_buckets, cfg.dim, cfg.hidden, cfg.history_len, cfg.category_features)
        pre = pretrain_text(model, session_pairs(tables, start_date, train_days, cfg, cuts), cfg)
    t1 = time.perf_counter()
    # the category lookup is rebuilt from today's catalogue (new queries and items get their category)
    cats = CategoryIndex.from_tables(tables, cfg.category_threshold) if cfg.category_features else None
    losses = fit(model, train, cfg, cfg.epochs_warm if warm else cfg.epochs_cold, log, cats)
    t2 = time.perf_counter()
    metrics: dict[str, float] = {"train.impressions": len(train), "train.ctr": float(train.imp["clicked"].mean()),
                                 "train.final_loss": losses[-1], "train.warm_start": float(warm is not None)}
    if objective == "next_search":
        metrics.update(_sample_counts(train, "train"))
    if not warm and pre:
        metrics["pretrain.final_loss"] = pre[-1]
    if eval_days:
        if objective == "clicks":
            held = click_data(tables, start_date, eval_days, cfg)
        else:  # no train cut on the held-out days: every user, up to 00:00 after the last of them
            open_cuts = train_cuts(tables["events"], start_date, eval_days[-1] + 1, False)
            held = next_search_data(tables, start_date, eval_days, cfg, samples, open_cuts, pool, cfg.seed + 1, s)
            metrics.update(_sample_counts(held, "eval"))
        metrics.update(evaluate(model, cfg, held, pop, cats, success))
    if objective == "clicks":
        for slot, e in enumerate(examination(model)):
            metrics[f"model.examination_slot{slot}"] = e
    metrics.update({"seconds.data": t1 - t0, "seconds.train": t2 - t1, "seconds.eval": time.perf_counter() - t2})
    meta: dict[str, Any] = {"day": day, "objective": objective, "train_days": train_days, "eval_days": eval_days,
                            "warm_start": str(warm) if warm else None}
    if objective == "next_search":
        meta.update({"negatives": {"popular": cfg.neg_popular, "popular_power": cfg.neg_popular_power,
                                   "hard": cfg.neg_hard},
                     "anchor": samples.anchor, "label_horizon_days": samples.label_horizon_days,
                     "success_rate": success is not None})
    meta["metrics"] = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    folder = save_model(model, cfg, model_dir(root, day), categories=cats, success=success, meta=meta)
    return TrainResult(day, folder, warm, train_days, eval_days, metrics, losses, objective)


def _sample_counts(data: ClickData, split: str) -> dict[str, float]:
    """Anchors and rows per source of next-search data."""
    by = dict(data.imp.group_by("source").len().iter_rows())
    return {f"{split}.anchors": len(data.contexts), f"{split}.positives": by.get("next_search", 0),
            f"{split}.negatives_hard": by.get("hard", 0), f"{split}.negatives_popular": by.get("popular", 0)}
