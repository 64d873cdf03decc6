"""The CTR reward model p̂(click | user context, query text) (paper Eq. 14; trained daily, Eq. 15).

Architecture (all text through one shared hashed-n-gram embedding, so *any* query text is scorable):

* **query** q = Σ_g E[g]/√n over the query's hashed char n-grams and words (``text.ngram_ids``);
* **behaviours** b_i = text(content_i) + type embedding + recency embedding (days-ago bucket);
* **DIN attention** (Zhou et al. 2018): a_i = MLP([q, b_i, q⊙b_i, q−b_i, s_i]) over the last L behaviours,
  softmax-normalised over the valid ones, u = Σ a_i·b_i. s_i is a fixed (not learned) feature: the n-gram cosine
  between the query and behaviour i — an exact-match prior that a small log cannot learn from scratch;
* **profile** p = Σ hashed embeddings of gender, age bucket, occupation, city;
* **categories** (``ctr.category_features``, DIN's category side information; ``ctr_categories``): c_i = two fixed
  flags, behaviour i is in the query's leaf category / in a sibling leaf (same parent), resolved through the world's
  public catalogue; c_i joins s_i in the attention input, and the head gets their shares over all behaviours and
  over today's and yesterday's;
* **head** MLP([q, u, p, q⊙u, q⊙p, max s, mean s, max s over today+yesterday, log(1+n) (, c shares)]) → logit r.

A cold-started model first pre-trains the text embedding on the logs' **session co-occurrence** (InfoNCE: two
behaviours of one session — a search and a clicked item, two searches — against in-batch negatives), so texts of
one shopping intent sit together before the sparse click signal is fitted (``ctr_train.pretrain_text``).

**Position bias** (PAL, Guo et al. 2019): p(click | slot) = σ(r)·e(slot), with e(0) = 1 and e(1), e(2) = σ(θ) learned.
Training fits the product to the logged clicks; scoring returns σ(r) = p(click | examined), free of slot bias.

**Objectives** (``ctr.objective``, ``ctr_train``): ``clicks`` fits the logged HintQ clicks; ``next_search`` (a
plain search log, no exposures) fits p(user searches q next | context) on next searches against sampled negatives,
all at slot 0. With ``ctr.success_rate`` a next-search model also carries each query's smoothed search success rate
(:class:`SuccessRates`) and :meth:`CTRScorer.score` multiplies by it.

Artefacts: ``model.safetensors`` (weights) + ``model.json`` (architecture, featuriser settings, training meta), and
with categories the lookup ``categories.parquet`` + ``category_parents.parquet``, with success rates
``success.parquet``. Never pickle.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from aigq.atomic import staged_dir
from aigq.config import CTRConfig
from aigq.rewards.context import UserContext
from aigq.rewards.ctr_categories import CategoryIndex, match_features
from aigq.rewards.text import hash_token, ngram_ids, pair_cosines, to_text

TYPES = ("search", "click", "cart", "buy")
AGE_BUCKETS = (0, 1, 2, 3, 7, 14, 30)  # days-ago bucket edges for the recency embedding
N_SLOTS = 3
N_SIM = 4
N_CAT = 2  # same leaf, sibling leaf (``ctr_categories.match_features``)
PROFILE_BUCKETS = 4096
FORMAT_VERSION = 1


_AGE_TABLE = [int(np.searchsorted(AGE_BUCKETS, d, side="right")) for d in range(AGE_BUCKETS[-1] + 1)]


def _age_bucket(days: int) -> int:
    return _AGE_TABLE[min(max(days, 0), AGE_BUCKETS[-1])]


@lru_cache(maxsize=262_144)
def _text_ids(text: str, buckets: int, n_min: int, n_max: int, max_chars: int) -> np.ndarray:
    return ngram_ids(to_text(text, max_chars), buckets, n_min, n_max, max_chars)


def _profile_tokens(profile: dict[str, Any]) -> list[str]:
    out = []
    for k, v in profile.items():
        v = to_text(v, 64)
        if k == "age":
            try:
                v = str(int(float(v)) // 5)
            except ValueError:
                continue
        if v:
            out.append(f"{k}={v.lower()}")
    return out


@dataclass
class Batch:
    """Featurised (contexts × queries). Contexts are featurised once; ``ctx`` maps each query row to its context."""

    q_ids: torch.Tensor
    q_off: torch.Tensor
    q_w: torch.Tensor
    h_ids: torch.Tensor  # behaviour texts of all contexts, (C·L) bags
    h_off: torch.Tensor
    h_w: torch.Tensor
    h_type: torch.Tensor  # (C, L)
    h_age: torch.Tensor  # (C, L)
    h_mask: torch.Tensor  # (C, L) bool
    p_ids: torch.Tensor
    p_off: torch.Tensor
    ctx: torch.Tensor  # (N,)
    sim: torch.Tensor  # (N, L) fixed query–behaviour n-gram cosine
    slot: torch.Tensor  # (N,) shown slot (0 when unknown)
    cat: torch.Tensor | None = None  # (N, L, 2) fixed same-leaf / sibling-leaf flags (``ctr_categories``)


class Featurizer:
    def __init__(self, cfg: CTRConfig, categories: CategoryIndex | None = None):
        self.cfg, self.categories = cfg, categories

    def ids(self, text: Any) -> np.ndarray:
        c = self.cfg
        if not isinstance(text, str):
            text = to_text(text, c.max_text_chars)
        return _text_ids(text, c.hash_buckets, c.ngram_min, c.ngram_max, c.max_text_chars)

    @staticmethod
    def _bags(sets: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lens = np.array([len(s) for s in sets], dtype=np.int64)
        flat = np.concatenate([*sets, np.zeros(0, np.int64)])
        off = np.concatenate([[0], np.cumsum(lens)[:-1]]) if len(sets) else np.zeros(0, np.int64)
        w = np.repeat(1.0 / np.sqrt(np.maximum(lens, 1)), lens).astype(np.float32)
        return torch.from_numpy(flat), torch.from_numpy(off.astype(np.int64)), torch.from_numpy(w)

    def batch(self, contexts: list[UserContext], ctx_index: Any, queries: list[Any], slots: Any = None) -> Batch:
        L = self.cfg.history_len
        ctx_index = np.asarray(ctx_index, dtype=np.int64)
        C = len(contexts)
        h_sets: list[np.ndarray] = []
        h_type = np.zeros((C, L), np.int64)
        h_age = np.zeros((C, L), np.int64)
        h_mask = np.zeros((C, L), bool)
        p_sets, h_text = [], []
        for c, uc in enumerate(contexts):
            behs = [b for b in uc.behaviours if b[0] <= self.cfg.history_days][:L]
            for i in range(L):
                if i < len(behs):
                    d, t, content = behs[i]
                    h_sets.append(self.ids(content))
                    h_text.append(content)
                    h_type[c, i] = TYPES.index(t) + 1 if t in TYPES else 0
                    h_age[c, i] = _age_bucket(int(d))
                    h_mask[c, i] = len(h_sets[-1]) > 0
                else:
                    h_sets.append(np.zeros(0, np.int64))
                    h_text.append(None)
            toks = _profile_tokens(uc.profile)
            p_sets.append(np.array([hash_token(t, PROFILE_BUCKETS) for t in toks], dtype=np.int64))
        q_sets = [self.ids(q) for q in queries]
        # fixed similarity: query row n vs behaviour (ctx[n], i), for every i
        left = np.repeat(np.arange(len(q_sets)), L)
        right = len(q_sets) + (ctx_index[:, None] * L + np.arange(L)[None, :]).ravel()
        sim = pair_cosines(q_sets + h_sets, left, right).reshape(len(q_sets), L)
        qi, qo, qw = self._bags(q_sets)
        hi, ho, hw = self._bags(h_sets)
        pi, po, _ = self._bags(p_sets)
        slot = np.zeros(len(q_sets), np.int64) if slots is None else np.clip(np.asarray(slots, np.int64), 0, N_SLOTS - 1)
        cat = None
        if self.categories is not None:
            ql, qp = self.categories.ids(list(queries))
            hl, hp = self.categories.ids(h_text)
            cat = torch.from_numpy(match_features(ql, qp, hl.reshape(C, L), hp.reshape(C, L), ctx_index))
        return Batch(qi, qo, qw, hi, ho, hw, torch.from_numpy(h_type), torch.from_numpy(h_age),
                     torch.from_numpy(h_mask), pi, po, torch.from_numpy(ctx_index), torch.from_numpy(sim),
                     torch.from_numpy(slot), cat)


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))


class CTRModel(nn.Module):
    def __init__(self, hash_buckets: int, dim: int, hidden: int, history_len: int, categories: bool = False):
        super().__init__()
        self.arch = {"hash_buckets": hash_buckets, "dim": dim, "hidden": hidden, "history_len": history_len,
                     "categories": categories}
        self.categories = categories
        n_cat = N_CAT if categories else 0
        self.text = nn.EmbeddingBag(hash_buckets, dim, mode="sum", sparse=True)  # few rows touched per step
        self.btype = nn.Embedding(len(TYPES) + 1, dim)
        self.age = nn.Embedding(len(AGE_BUCKETS) + 1, dim)
        self.profile = nn.EmbeddingBag(PROFILE_BUCKETS, dim, mode="sum")
        self.att = _mlp(4 * dim + 1 + n_cat, hidden, 1)
        self.head = _mlp(5 * dim + N_SIM + 2 * n_cat, hidden, 1)
        self.exam = nn.Parameter(torch.full((N_SLOTS - 1,), 1.5))  # logit of e(slot), slots 1..2
        for emb in (self.text, self.profile):
            nn.init.normal_(emb.weight, std=0.05)
        nn.init.normal_(self.btype.weight, std=0.05)
        nn.init.normal_(self.age.weight, std=0.05)

    def relevance(self, b: Batch) -> torch.Tensor:
        """Relevance logit r per query row (σ(r) = p(click | examined))."""
        C, L = b.h_mask.shape
        q = self.text(b.q_ids, b.q_off, per_sample_weights=b.q_w)
        h = self.text(b.h_ids, b.h_off, per_sample_weights=b.h_w).view(C, L, -1)
        h = h + self.btype(b.h_type) + self.age(b.h_age)
        p = self.profile(b.p_ids, b.p_off)
        hq, mask = h[b.ctx], b.h_mask[b.ctx]  # (N, L, d), (N, L)
        qe = q[:, None, :].expand_as(hq)
        fixed = [b.sim[..., None]]
        if self.categories:
            if b.cat is None:
                raise ValueError("this CTR model uses category features: featurise with a CategoryIndex")
            fixed.append(b.cat)
        score = self.att(torch.cat([qe, hq, qe * hq, qe - hq, *fixed], -1)).squeeze(-1)
        score = score.masked_fill(~mask, -1e4)
        a = torch.softmax(score, -1) * mask
        u = (a[..., None] * hq).sum(1)
        s = b.sim.masked_fill(~mask, 0.0)
        n = mask.sum(1).clamp(min=1)
        recent = (b.h_age[b.ctx] <= 2) & mask
        feats = torch.stack([s.max(1).values, s.sum(1) / n, (s * recent).max(1).values,
                             torch.log1p(mask.sum(1).float())], -1)
        if self.categories:  # share of all / of today's and yesterday's behaviours in the query's leaf, its parent
            cm = b.cat * mask[..., None]
            rc = recent.float()[..., None]
            feats = torch.cat([feats, cm.sum(1) / n[:, None], (cm * rc).sum(1) / rc.sum(1).clamp(min=1)], -1)
        pu = p[b.ctx]
        return self.head(torch.cat([q, u, pu, q * u, q * pu, feats], -1)).squeeze(-1)

    def log_examination(self, slot: torch.Tensor) -> torch.Tensor:
        e = torch.cat([torch.zeros(1), nn.functional.logsigmoid(self.exam)])
        return e[slot]

    def click_loss(self, b: Batch, clicked: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of the logged clicks under p = σ(r)·e(slot) (PAL position bias)."""
        logp = nn.functional.logsigmoid(self.relevance(b)) + self.log_examination(b.slot)
        log1mp = torch.log1p(-logp.exp().clamp(max=1 - 1e-6))
        return -(clicked * logp + (1 - clicked) * log1mp).mean()


SUCCESS_FILE = "success.parquet"


def _success_key(q: str) -> str:
    return " ".join(q.lower().split())


class SuccessRates:
    """Query → smoothed search success rate (share of its searches followed by an item event before the user's next
    search, ``aigq.data.next_search``): (successes + prior·g) / (searches + prior), g = the global rate, which also
    scores unknown queries. Keys are lower-cased, whitespace-collapsed; lookup is one dict access per query."""

    def __init__(self, table: pl.DataFrame, prior: float):
        self.table, self.prior = table, float(prior)
        n, k = int(table["searches"].sum() or 0), int(table["successes"].sum() or 0)
        self.global_rate = k / n if n else 1.0
        rate = (table["successes"].cast(pl.Float64) + self.prior * self.global_rate) / (
            table["searches"].cast(pl.Float64) + self.prior)
        self.table = table.with_columns(rate=rate)
        self.rates = dict(zip(self.table["query"].to_list(), self.table["rate"].to_list(), strict=True))

    @classmethod
    def from_searches(cls, searches: pl.DataFrame, prior: float) -> SuccessRates:
        """From search rows with ``query`` and ``success`` (``next_search.searches_with_success``)."""
        key = pl.col("query").str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()
        t = (searches.with_columns(query=key).group_by("query").agg(searches=pl.len().cast(pl.Int64), successes=pl.col("success").sum().cast(pl.Int64))
             .sort("query"))
        return cls(t, prior)

    def __call__(self, queries: list[Any]) -> np.ndarray:
        get, g = self.rates.get, self.global_rate
        return np.fromiter((get(_success_key(q), g) if isinstance(q, str) else g for q in queries), np.float64,
                           len(queries))

    def save(self, folder: str | Path) -> None:
        self.table.select("query", "searches", "successes", "rate").write_parquet(Path(folder) / SUCCESS_FILE)

    @classmethod
    def load(cls, folder: str | Path, prior: float) -> SuccessRates | None:
        path = Path(folder) / SUCCESS_FILE
        return cls(pl.read_parquet(path).select("query", "searches", "successes"), prior) if path.is_file() else None


def save_model(model: CTRModel, cfg: CTRConfig, folder: str | Path, meta: dict[str, Any] | None = None,
               categories: CategoryIndex | None = None, success: SuccessRates | None = None) -> Path:
    """``folder/model.safetensors`` + ``folder/model.json`` (architecture, featuriser config, meta), + the category
    lookup (``ctr_categories``) for a model with category features, + ``success.parquet`` with ``success``. The
    folder is written whole in a temporary sibling and swapped in (:func:`aigq.atomic.staged_dir`): a reward actor
    or Serve loading it meanwhile sees the old model or the new one, and nothing of an earlier save survives (a stale
    ``success.parquet`` would switch the scoring)."""
    if model.categories and categories is None:
        raise ValueError("a CTR model with category features is saved with its CategoryIndex")
    folder = Path(folder)
    with staged_dir(folder) as tmp:
        if model.categories:
            categories.save(tmp)
        if success is not None:
            success.save(tmp)
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        info = {"format_version": FORMAT_VERSION, "arch": model.arch, "featurizer": cfg.model_dump(),
                "meta": meta or {}}
        (tmp / "model.json").write_text(json.dumps(info, indent=2, default=str))
    return folder


def load_model(folder: str | Path) -> tuple[CTRModel, CTRConfig, dict[str, Any]]:
    folder = Path(folder)
    info_path, weights = folder / "model.json", folder / "model.safetensors"
    if not info_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{folder} is not a CTR model folder (needs model.json + model.safetensors)")
    info = json.loads(info_path.read_text())
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder}: CTR model format {info.get('format_version')} != {FORMAT_VERSION}")
    model = CTRModel(**info["arch"])
    model.load_state_dict(load_file(str(weights)))
    return model, CTRConfig.model_validate(info["featurizer"]), info.get("meta", {})


def load_categories(folder: str | Path, model: CTRModel, cfg: CTRConfig) -> CategoryIndex | None:
    """The model folder's category lookup, or None for a model without category features."""
    return CategoryIndex.load(folder, cfg.category_threshold) if model.categories else None


class CTRScorer:
    """Batched, gradient-free scoring of (context, queries) with a trained model: p̂ = p(click | examined) (or
    p(searched next | context)), times the query's success rate when the model has one."""

    def __init__(self, model: CTRModel, cfg: CTRConfig, categories: CategoryIndex | None = None, chunk: int = 4096,
                 success: SuccessRates | None = None, meta: dict[str, Any] | None = None):
        if model.categories and categories is None:
            raise ValueError("this CTR model uses category features: pass its CategoryIndex (CTRScorer.load does)")
        self.model, self.cfg, self.chunk, self.success = model.eval(), cfg, chunk, success
        self.meta = meta or {}
        self.objective = self.meta.get("objective", "clicks")
        self.feat = Featurizer(cfg, categories if model.categories else None)

    @classmethod
    def load(cls, folder: str | Path) -> CTRScorer:
        model, cfg, meta = load_model(folder)
        return cls(model, cfg, load_categories(folder, model, cfg), success=SuccessRates.load(folder, cfg.success_prior),
                   meta=meta)

    @torch.inference_mode()
    def logits(self, contexts: list[UserContext], ctx_index: Any, queries: list[Any]) -> np.ndarray:
        ctx_index = np.asarray(ctx_index, dtype=np.int64)
        out = np.zeros(len(queries), dtype=np.float32)
        for s in range(0, len(queries), self.chunk):
            idx = ctx_index[s : s + self.chunk]
            used, local = np.unique(idx, return_inverse=True)
            b = self.feat.batch([contexts[i] for i in used], local, queries[s : s + self.chunk])
            out[s : s + self.chunk] = self.model.relevance(b).numpy()
        return out

    def score(self, contexts: list[UserContext], ctx_index: Any, queries: list[Any]) -> np.ndarray:
        """p̂ per query row (``ctx_index[n]`` = its context), × the query's success rate when the model has one.
        Empty / garbage text is scored like any text."""
        p = 1.0 / (1.0 + np.exp(-self.logits(contexts, ctx_index, queries).astype(np.float64)))
        return p if self.success is None else p * self.success(queries)

    def score_one(self, context: UserContext, queries: list[Any]) -> np.ndarray:
        return self.score([context], np.zeros(len(queries), np.int64), queries)


def examination(model: CTRModel) -> list[float]:
    """Learned examination probabilities e(slot) (slot 0 fixed to 1)."""
    return [1.0] + [1.0 / (1.0 + math.exp(-float(x))) for x in model.exam.detach()]
