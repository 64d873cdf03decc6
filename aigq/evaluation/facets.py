"""Strong transparent baselines over the public query-understanding table (issue 17, world-calibration.md
"Controls"). Each learns from train days only and reads only public tables, never ``world/hidden``.

**Query understanding** (:class:`Understanding`): a text's leaf category and facets. A world-v2 world has a public
lexicon (``aigq.data.lexicon``): the strict parser gives (leaf, facets); an item click's description parses once its
" by <brand>" tail is dropped. Any other world: the category of the world's ``CategoryMapper`` and no facets.

A user's **shares** from their prompt's ``eval.rule_history`` most recent behaviours b_1 (most recent) … b_H with
weight decay^(i−1) (``eval.coclick_decay``): leaf share s(l) = Σ weights of behaviours in leaf l / Σ weights of
behaviours with a leaf; facet share f_t(v) = the same over behaviours carrying a value of facet type t.

* **facet-rule** (category + facet-share rule): for each of the user's ``eval.rule_leaves`` top leaves l, the concepts
  l + S for every set S of at most 2 facet types among the user's 4 most used, each with the user's top value, scored
  s(l) · P(|S|) · Π_{t∈S} f_t(v_t) (P(k) = the share of train queries with k facets); plus the leaf's train queries,
  scored s(l) · P(q | l). Ranked by score; popularity fills the rest. Without a lexicon only the second part exists:
  the plain category-share rule.
* **co-click+backoff**: co-click's exact-text list first (``baselines.CoClick``); then the facet rule's candidates with
  leaf weights backed off to leaf transitions, w(l') = Σ_i decay^(i−1) P(l' | leaf(b_i)), P(l' | l) counted from the
  same co-click evidence mapped to leaves (sessions and query → next-query steps); then popularity. Strict back-off:
  no exact evidence is ever outranked by a backed-off guess.
* **ebr-all**: the EBR two-tower model (``ebr.py``) scoring the whole known query space instead of the train labels:
  every text searched before the users' train cuts and, on a lexicon world, every concept with at most one facet.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import polars as pl

from aigq.config import AIGQConfig
from aigq.data import prompt as P
from aigq.data.categories import CategoryMapper, normalise
from aigq.data.lexicon import Lexicon
from aigq.evaluation.baselines import CoClick, _normalised, fit_coclick, popular_queries, train_pairs, world_transitions

Parsed = tuple[str | None, dict[int, int]]


class Understanding:
    """Text → (leaf category or None, {facet type: value}) from a world's public tables (module docstring)."""

    def __init__(self, lexicon: Lexicon | None, mapper: CategoryMapper | None):
        self.lexicon, self.mapper = lexicon, mapper
        self._memo: dict[str, Parsed] = {}

    @classmethod
    def from_world(cls, world: Path, threshold: float = 0.5) -> Understanding:
        lexicon = Lexicon.from_world(world)
        try:
            mapper = CategoryMapper.from_world(world, threshold)
        except (FileNotFoundError, ValueError):
            mapper = None
        return cls(lexicon, mapper)

    def parse(self, text: str) -> Parsed:
        key = normalise(text)
        if key in self._memo:
            return self._memo[key]
        out: Parsed = (None, {})
        if self.lexicon is not None:
            hit = self.lexicon.parse(key) or self.lexicon.parse(key.split(" by ", 1)[0])
            if hit is not None:
                out = (self.lexicon.leaves[hit[0]], dict(hit[1]))
        if out[0] is None and self.mapper is not None:
            out = (self.mapper.map([key])[0], {})
        self._memo[key] = out
        return out

    def render(self, leaf: str, facets: dict[int, int]) -> str | None:
        if self.lexicon is None:
            return None
        return self.lexicon.render(self.lexicon.leaves.index(leaf), facets)


def shares(und: Understanding, prompt: str, history: int, decay: float):
    """(leaf → share, facet type → {value: share}) of a prompt's most recent behaviours (module docstring)."""
    behs = P.parse_behaviours(prompt)
    leaf: dict[str, float] = defaultdict(float)
    facet: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for i, idx in enumerate(sorted(behs)[:history]):
        cat, fs = und.parse(behs[idx][2])
        w = decay**i
        if cat is not None:
            leaf[cat] += w
        for t, v in fs.items():
            facet[t][v] += w
    tot = sum(leaf.values())
    leaf_s = {c: x / tot for c, x in leaf.items()} if tot else {}
    facet_s = {t: {v: x / sum(vs.values()) for v, x in vs.items()} for t, vs in facet.items()}
    return leaf_s, facet_s


@dataclass
class FacetRule:
    und: Understanding
    in_leaf: dict[str, list[tuple[str, float]]]  # leaf → [(train query, P(q | leaf))], best first
    k_prior: list[float]  # P(k facets) of train queries
    popular: list[str]
    history: int
    decay: float
    leaves: int
    transitions: dict[str, dict[str, float]] = field(default_factory=dict)  # P(l' | l) (co-click+backoff)

    def candidates(self, leaf_w: dict[str, float], facet_s: dict[int, dict[int, float]]) -> dict[str, float]:
        out: dict[str, float] = {}
        top_types = sorted(facet_s, key=lambda t: -sum(facet_s[t].values()))[:4]
        top_val = {t: max(facet_s[t].items(), key=lambda kv: (kv[1], -kv[0])) for t in top_types}
        for leaf, s in sorted(leaf_w.items(), key=lambda kv: (-kv[1], kv[0]))[: self.leaves]:
            for n in range(3):
                for S in combinations(top_types, n):
                    text = self.und.render(leaf, {t: top_val[t][0] for t in S})
                    if text is None:
                        break
                    sc = s * self.k_prior[n]
                    for t in S:
                        sc *= top_val[t][1]
                    out[text] = max(out.get(text, 0.0), sc)
            for q, p in self.in_leaf.get(leaf, ())[:30]:
                key = normalise(q)
                out[key] = max(out.get(key, 0.0), s * p)
        return out

    def _fill(self, ranked: list[str], k: int) -> list[str]:
        seen = {normalise(q) for q in ranked}
        return ranked + [q for q in self.popular[: 2 * k] if normalise(q) not in seen][: max(0, k - len(ranked))]

    def recommend(self, prompts: Sequence[str], k: int) -> list[list[str]]:
        out = []
        for prompt in prompts:
            leaf_s, facet_s = shares(self.und, prompt, self.history, self.decay)
            c = self.candidates(leaf_s, facet_s)
            out.append(self._fill([q for q, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:k]], k))
        return out

    def backoff_leaves(self, prompt: str) -> dict[str, float]:
        """w(l') = Σ_i decay^(i−1) P(l' | leaf(b_i)) over the prompt's recent behaviours."""
        w: dict[str, float] = defaultdict(float)
        behs = P.parse_behaviours(prompt)
        for i, idx in enumerate(sorted(behs)[: self.history]):
            cat = self.und.parse(behs[idx][2])[0]
            for nxt, p in self.transitions.get(cat, {}).items() if cat is not None else ():
                w[nxt] += self.decay**i * p
        return dict(w)


@dataclass
class CoClickBackoff:
    coclick: CoClick
    rule: FacetRule

    def recommend(self, prompts: Sequence[str], k: int) -> list[list[str]]:
        out = []
        for prompt in prompts:
            exact = self.coclick.scores(prompt)
            ranked = [self.coclick.texts.get(q, q) for q, _ in sorted(exact.items(), key=lambda kv: (-kv[1], kv[0]))]
            seen = {normalise(q) for q in ranked[:k]}
            _, facet_s = shares(self.rule.und, prompt, self.rule.history, self.rule.decay)
            back = self.rule.candidates(self.rule.backoff_leaves(prompt), facet_s)
            ranked = ranked[:k] + [q for q, _ in sorted(back.items(), key=lambda kv: (-kv[1], kv[0]))
                                   if q not in seen][: max(0, k - len(seen))]
            out.append(self.rule._fill(ranked, k))
        return out


def fit_facet_rule(cfg: AIGQConfig, samples_dir: Path | None = None) -> FacetRule:
    e = cfg.eval
    und = Understanding.from_world(cfg.world_dir(), e.category_threshold)
    pairs = train_pairs(samples_dir or cfg.samples_dir())
    counts = _normalised(pairs, "query").group_by("qn").agg(n=pl.len(), query=pl.col("query").first())
    parsed = [und.parse(q) for q in counts["qn"].to_list()]
    counts = counts.with_columns(leaf=pl.Series([p[0] for p in parsed], dtype=pl.String),
                                 k=pl.Series([min(len(p[1]), 2) for p in parsed]))
    in_leaf: dict[str, list[tuple[str, float]]] = {}
    by_leaf = (counts.drop_nulls("leaf").with_columns(p=pl.col("n") / pl.col("n").sum().over("leaf"))
               .sort(["leaf", "p", "qn"], descending=[False, True, False]))
    for leaf, q, p in by_leaf.select("leaf", "qn", "p").iter_rows():
        in_leaf.setdefault(leaf, []).append((q, float(p)))
    kc = counts.group_by("k").agg(pl.col("n").sum())
    total = max(1, int(kc["n"].sum()))
    k_prior = [float(kc.filter(pl.col("k") == i)["n"].sum()) / total for i in range(3)]
    return FacetRule(und, in_leaf, k_prior, popular_queries(pairs, e.popularity_days), e.rule_history,
                     e.coclick_decay, e.rule_leaves)


def fit_coclick_backoff(cfg: AIGQConfig, samples_dir: Path | None = None) -> CoClickBackoff:
    """Co-click plus the facet rule with leaf transitions counted from the same evidence (module docstring)."""
    rule = fit_facet_rule(cfg, samples_dir)
    tr = world_transitions(cfg)
    co = fit_coclick(cfg, samples_dir, transitions=tr)
    pairs = train_pairs(samples_dir or cfg.samples_dir())
    steps: list[tuple[str, str]] = []
    for prompt, q in pairs.select("prompt", "query").iter_rows():  # session evidence: last behaviour → label
        behs = P.parse_behaviours(prompt)
        if behs:
            steps.append((behs[min(behs)][2], q))
    steps += list(tr.select("key", "qn").iter_rows())
    n: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for a, b in steps:
        la, lb = rule.und.parse(a)[0], rule.und.parse(b)[0]
        if la is not None and lb is not None:
            n[la][lb] += 1.0
    rule.transitions = {a: {b: c / sum(bs.values()) for b, c in bs.items()} for a, bs in n.items()}
    return CoClickBackoff(co, rule)


def query_space(cfg: AIGQConfig, samples_dir: Path | None = None) -> list[str]:
    """ebr-all's candidates: train labels, every text searched before the users' train cuts, and on a lexicon world
    every concept with at most one facet."""
    from aigq.data.holdout import before_cut, searches, train_cuts
    from aigq.data.validate import validate_world

    pairs = train_pairs(samples_dir or cfg.samples_dir())
    world = validate_world(cfg.world_dir(), write_quarantine=False)
    events, start, days = world.tables["events"], str(world.meta["start_date"]), int(world.meta["days"])
    cuts = train_cuts(events, start, first_test_day=days - cfg.samples.test_days + 1,
                      holdout=cfg.samples.last_query_holdout)
    searched = before_cut(searches(events), cuts)["query"].drop_nulls().unique(maintain_order=True).to_list()
    texts = [*pairs["query"].to_list(), *searched]
    lex = Lexicon.from_world(cfg.world_dir())
    if lex is not None:
        texts += [lex.render(leaf, {}) for leaf in range(lex.n_leaves)]
        texts += [lex.render(leaf, {t: v}) for leaf in range(lex.n_leaves) for t, ws in enumerate(lex.words)
                  for v in range(len(ws))]
    seen: set[str] = set()
    return [q for q in texts if not (normalise(q) in seen or seen.add(normalise(q)))]
