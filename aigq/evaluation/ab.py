"""Simulated A/B test of HintQ arms on a simulated world (paper §5.4, Table 3): pure logic, no Ray.

This is the evaluator allowed to read the simulator's hidden model (``aigq.data.hidden``); the daily loop's day
simulation (``aigq.loop``) uses the same functions. Nothing that learns imports this module.

**Inputs.** ``channels``: recall channel → arm-lists frame ``(user_id Int64, day Int32, queries List[String])``
(the convention of ``aigq.evaluation.recommend``): what the channel recalls for the user on that day, best first.
``arms``: arm → the channels it recalls from, in priority order (control = the legacy production channels
``popular + coclick``; treatment = control + the AIGQ channels ``direct + think``; single-channel arms compare one
channel alone). ``requests``: the HintQ requests of the evaluation window ``(request_id, user_id, day)`` — by
default the world's own HintQ exposure requests on those days (when each user opened the homepage).

**One request, one arm** (:func:`run_ab`): the union of the arm's channels' candidates for (user, day), at most
``recall_per_channel`` from each, de-duplicated case- and space-insensitively (the first channel in the arm's order
keeps a query: that is its *source*) → ranked by the ranker (the CTR model p̂(click | user context as of the
morning of the day, query), as HintQ ranks) or, without one, by (position in its channel, channel order) → the top
``k`` (3) are shown → shown slot s is clicked when u(request, s) < p(click | user, day, query, s), p from the hidden
click model (:func:`aigq.data.hidden.click_probability`, position bias included — what the simulator used).

**Common random numbers.** u(request, slot) is a hash of (seed, request_id, slot) (:func:`crn_uniform`), the same
for every arm: arms that show the same query in the same slot of a request agree on its click, identical arms have
identical clicks, and differences between arms come from what they show, not from sampling noise.

**Hidden features of shown text** (:class:`QueryResolver`): text equal to a vocabulary query after normalisation
(case, whitespace) → that query's category and popularity, exactly as the simulator; other (generated) text → the
leaf category of the injected mapper (``aigq.data.categories.CategoryMapper``: exact, else the nearest known
query / item text by char-trigram cosine ≥ its threshold) and popularity 0 (nobody searches that exact text); no
category → interest 0, related 0, popularity 0, i.e. p = bias[s]·σ(base).

**Metrics** (:func:`summarise`), per arm:

* **UCTR** — population U = the users with ≥ 1 request in the window (the same U for every arm); UCTR = |{u ∈ U:
  ≥ 1 click on a shown HintQ query in any of u's requests in the window}| / |U|; 95 % interval = Wilson score
  interval (:func:`wilson`).
* **gain** vs control = UCTR_arm / UCTR_control − 1, interval = paired percentile bootstrap over users (B resamples
  of U with replacement, the same resample for both arms; :func:`paired_bootstrap_gain`).
* **CTR** = clicks / shown impressions; **PVR** = share of shown impressions whose source is an AIGQ channel.
* **discovery** (Table 3): of the distinct (user, day, query) an arm showed from an AIGQ channel, the share whose
  query is not among the control arm's candidates (any of its channels) for that user-day — *unique queries*; and
  of the distinct (user, day, leaf category) of those queries (mapper; no category → left out), the share whose
  category is not the category of any control candidate for that user-day — *unique leaf categories*.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np
import polars as pl

from aigq.data.hidden import HiddenModel, click_probability
from aigq.data.vocabulary import normalise_query

Mapper = Callable[[Sequence[str]], list[str | None]]  # texts → leaf category (None = unknown)
Ranker = Callable[[pl.DataFrame], np.ndarray]  # candidates (user_id, day, query) → score, higher = shown first
AIGQ_CHANNELS = ("direct", "think")


def norm(text: object) -> str:
    """Case- and whitespace-insensitive key of a query (de-duplication and the vocabulary match)."""
    return normalise_query(str(text or ""))


def norm_expr(col: str | pl.Expr) -> pl.Expr:
    """:func:`norm` as a polars expression."""
    c = pl.col(col) if isinstance(col, str) else col
    return c.str.replace_all(r"\s+", " ").str.strip_chars().str.to_lowercase()


# ------------------------------------------------------------------ common random numbers, intervals


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (uint64 arrays; wrap-around multiplication is intended)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def crn_uniform(seed: int, request_ids: Sequence[int] | np.ndarray, slots: Sequence[int] | np.ndarray) -> np.ndarray:
    """Uniform [0, 1) per (seed, request id, slot), identical wherever it is computed (arms, processes, days)."""
    ids = np.asarray(request_ids, dtype=np.int64).view(np.uint64)
    sl = np.asarray(slots, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        z = _mix(np.full(ids.shape, np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + np.uint64(0x9E3779B97F4A7C15)))
        z = _mix(z + ids)
        z = _mix(z + sl + np.uint64(1))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (NaN, NaN when n = 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_bootstrap_gain(x_arm: np.ndarray, x_ctl: np.ndarray, resamples: int, confidence: float,
                          seed: int) -> tuple[float, float]:
    """Percentile interval of mean(x_arm)/mean(x_ctl) − 1 over paired resamples of the users (rows)."""
    x_arm, x_ctl = np.asarray(x_arm, np.float64), np.asarray(x_ctl, np.float64)
    n = len(x_arm)
    if n == 0 or resamples <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    out, chunk = [], max(1, 2_000_000 // n)
    for lo in range(0, resamples, chunk):
        idx = rng.integers(0, n, (min(chunk, resamples - lo), n))
        a, c = x_arm[idx].sum(1), x_ctl[idx].sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(np.where(c > 0, a / c - 1.0, np.nan))
    g = np.concatenate(out)
    if np.isnan(g).all():
        return float("nan"), float("nan")
    tail = 100 * (1 - confidence) / 2
    return float(np.nanpercentile(g, tail)), float(np.nanpercentile(g, 100 - tail))


# ------------------------------------------------------------------ hidden features of shown text


class QueryResolver:
    """Shown text → (leaf category, popularity, how) for the hidden click model; see the module docstring."""

    def __init__(self, vocabulary: pl.DataFrame, mapper: Mapper | None = None):
        self.mapper = mapper
        self._exact: dict[str, tuple[str, float]] = {}
        for q, c, p in vocabulary.select("query", "category", "pop").iter_rows():
            self._exact.setdefault(norm(q), (c, float(p)))

    @classmethod
    def for_hidden(cls, hidden: HiddenModel, mapper: Mapper | None = None) -> QueryResolver:
        """World v2 resolves by the public lexicon's strict parser (``mapper`` unused: no fuzzy match there)."""
        return ParsedResolver(hidden) if hidden.v2 is not None else cls(hidden.queries, mapper)

    def resolve(self, queries: Sequence[str]) -> pl.DataFrame:
        qs = list(dict.fromkeys(queries))
        cats: list[str | None] = [None] * len(qs)
        pops, how = [0.0] * len(qs), ["unknown"] * len(qs)
        todo = []
        for i, q in enumerate(qs):
            hit = self._exact.get(norm(q))
            if hit:
                cats[i], pops[i], how[i] = hit[0], hit[1], "vocabulary"
            else:
                todo.append(i)
        if todo and self.mapper is not None:
            for i, c in zip(todo, self.mapper([qs[i] for i in todo]), strict=True):
                if c is not None:
                    cats[i], how[i] = c, "mapped"
        return pl.DataFrame({"query": qs, "category": cats, "pop": pops, "match": how},
                            schema={"query": pl.String, "category": pl.String, "pop": pl.Float64, "match": pl.String})


class ParsedResolver(QueryResolver):
    """World v2: text → (category, composed popularity, "parsed" | "unknown") by ``HiddenModel.resolve``."""

    def __init__(self, hidden: HiddenModel):
        self.hidden, self.mapper = hidden, None

    def resolve(self, queries: Sequence[str]) -> pl.DataFrame:
        return self.hidden.resolve(list(queries)).select("query", "category", "pop", "match")


def click_probabilities(shown: pl.DataFrame, hidden: HiddenModel, resolver: QueryResolver) -> np.ndarray:
    """``shown`` (user_id, day, query, slot) → hidden p(click) per row, in row order (world v2: the hidden model
    parses the text itself and adds the taste term)."""
    if shown.height == 0:
        return np.zeros(0)
    if hidden.v2 is not None:
        return hidden.click_probability(shown.select("user_id", pl.col("day").cast(pl.Int32), "query", "slot"))
    res = resolver.resolve(shown["query"].to_list())
    req = shown.select("user_id", pl.col("day").cast(pl.Int32), "query", "slot").join(
        res.select("query", "category", "pop"), on="query", how="left", maintain_order="left")
    f = hidden.category_features(req)
    return click_probability(f["interest"].to_numpy(), f["related"].to_numpy(), f["pop"].to_numpy(),
                             f["slot"].to_numpy().astype(np.int64), hidden.params)


# ------------------------------------------------------------------ recall, ranking, clicks


def candidates(channels: dict[str, pl.DataFrame], arm: Sequence[str], per_channel: int) -> pl.DataFrame:
    """(user_id, day, query, source, pos, chan) of one arm: its channels' lists, de-duplicated per user-day (the
    first channel in ``arm`` keeps a query), at most ``per_channel`` from each."""
    frames = []
    for ci, name in enumerate(arm):
        if name not in channels:
            raise ValueError(f"arm uses channel {name!r} but no lists were given for it (have: {sorted(channels)})")
        f = (channels[name].unique(["user_id", "day"], keep="first", maintain_order=True)
             .with_columns(pl.col("queries").list.head(per_channel)).explode("queries")
             .filter(pl.col("queries").is_not_null() & (pl.col("queries").str.strip_chars() != ""))
             .select(pl.col("user_id").cast(pl.Int64), pl.col("day").cast(pl.Int32), query="queries")
             .with_columns(source=pl.lit(name), pos=pl.int_range(pl.len()).over("user_id", "day"), chan=pl.lit(ci)))
        frames.append(f)
    if not frames:
        return pl.DataFrame(schema={"user_id": pl.Int64, "day": pl.Int32, "query": pl.String, "source": pl.String,
                                    "pos": pl.Int64, "chan": pl.Int32})
    c = pl.concat(frames).with_columns(pl.col("pos").cast(pl.Int64), pl.col("chan").cast(pl.Int32),
                                       key=norm_expr("query"))
    return (c.sort("user_id", "day", "chan", "pos").unique(["user_id", "day", "key"], keep="first",
                                                         maintain_order=True).drop("key"))


def rank_and_show(cands: pl.DataFrame, ranker: Ranker | None, k: int) -> pl.DataFrame:
    """Top ``k`` of each user-day's candidates → (user_id, day, slot, query, source, score)."""
    if cands.height == 0:
        return cands.select("user_id", "day", "query", "source").with_columns(slot=pl.lit(0, pl.Int64),
                                                                              score=pl.lit(0.0))
    score = (np.asarray(ranker(cands.select("user_id", "day", "query")), dtype=np.float64) if ranker is not None
             else -cands["pos"].to_numpy().astype(np.float64) - cands["chan"].to_numpy() * 1e-3)
    return (cands.with_columns(score=pl.Series(score))
            .sort(["user_id", "day", "score", "pos", "chan"], descending=[False, False, True, False, False])
            .group_by("user_id", "day", maintain_order=True).head(k)
            .with_columns(slot=pl.int_range(pl.len()).over("user_id", "day"))
            .select("user_id", "day", "slot", "query", "source", "score"))


def impressions(shown: pl.DataFrame, requests: pl.DataFrame, hidden: HiddenModel, resolver: QueryResolver,
                seed: int) -> pl.DataFrame:
    """Every request × its user-day's shown list → + p_click, u (common random number), clicked."""
    uniq = shown.select("user_id", "day", "query", "slot").unique(maintain_order=True)
    uniq = uniq.with_columns(p_click=pl.Series(click_probabilities(uniq, hidden, resolver), dtype=pl.Float64))
    imp = (requests.select(pl.col("request_id").cast(pl.Int64), pl.col("user_id").cast(pl.Int64),
                           pl.col("day").cast(pl.Int32))
           .join(shown, on=["user_id", "day"], how="inner")
           .join(uniq, on=["user_id", "day", "query", "slot"], how="left"))
    u = crn_uniform(seed, imp["request_id"].to_numpy(), imp["slot"].to_numpy())
    return imp.with_columns(u=pl.Series(u), clicked=pl.Series(u) < pl.col("p_click")).sort("request_id", "slot")


def run_ab(channels: dict[str, pl.DataFrame], arms: dict[str, list[str]], requests: pl.DataFrame,
           hidden: HiddenModel, resolver: QueryResolver, ranker: Ranker | None = None, k: int = 3,
           per_channel: int = 20, seed: int = 0) -> pl.DataFrame:
    """All arms' impressions: (arm, request_id, user_id, day, slot, query, source, score, p_click, u, clicked).
    Each distinct (user, day, query) is scored once for all arms."""
    cands = {name: candidates(channels, arm, per_channel) for name, arm in arms.items()}
    ranker = score_once(list(cands.values()), ranker)
    out = []
    for name, c in cands.items():
        shown = rank_and_show(c, ranker, k)
        out.append(impressions(shown, requests, hidden, resolver, seed).with_columns(arm=pl.lit(name)))
    return pl.concat(out, how="diagonal_relaxed") if out else pl.DataFrame()


def score_once(frames: list[pl.DataFrame], ranker: Ranker | None) -> Ranker | None:
    """A ranker answering from one pass of ``ranker`` over the union of the frames' (user_id, day, query)."""
    if ranker is None:
        return None
    keys = ["user_id", "day", "query"]
    allc = pl.concat([f.select(keys) for f in frames]).unique(maintain_order=True)
    if allc.height == 0:
        return ranker
    table = allc.with_columns(_s=pl.Series(np.asarray(ranker(allc), dtype=np.float64)))
    return lambda c: c.select(keys).join(table, on=keys, how="left", maintain_order="left")["_s"].to_numpy()


# ------------------------------------------------------------------ metrics


def discovery(shown: pl.DataFrame, control: pl.DataFrame, mapper: Mapper | None,
              aigq: Sequence[str] = AIGQ_CHANNELS) -> dict[str, float]:
    """Table 3's discovery shares of one arm (module docstring). ``shown``: (user_id, day, query, source);
    ``control``: the control arm's candidates (user_id, day, query)."""
    mine = shown.filter(pl.col("source").is_in(list(aigq))).select("user_id", "day", "query")
    mine = mine.with_columns(key=norm_expr("query")).unique(["user_id", "day", "key"], maintain_order=True)
    ctl = control.select("user_id", "day", key=norm_expr("query")).unique().with_columns(hit=pl.lit(True))
    out = {"discovery.shown_aigq_queries": float(mine.height)}
    if mine.height == 0:
        return {**out, "discovery.queries": float("nan"), "discovery.categories": float("nan")}
    q = mine.join(ctl, on=["user_id", "day", "key"], how="left")
    out["discovery.queries"] = float(q["hit"].is_null().mean())
    if mapper is None:
        return {**out, "discovery.categories": float("nan")}
    texts = list(dict.fromkeys(mine["query"].to_list() + control["query"].to_list()))
    cat = pl.DataFrame({"query": texts, "cat": mapper(texts)}, schema={"query": pl.String, "cat": pl.String})
    mc = mine.join(cat, on="query", how="left").select("user_id", "day", "cat").drop_nulls().unique()
    cc = control.join(cat, on="query", how="left").select("user_id", "day", "cat").drop_nulls().unique()
    cc = cc.with_columns(hit=pl.lit(True))
    out["discovery.shown_aigq_categories"] = float(mc.height)
    out["discovery.categories"] = (float(mc.join(cc, on=["user_id", "day", "cat"], how="left")["hit"].is_null().mean())
                                   if mc.height else float("nan"))
    return out


def summarise(imp: pl.DataFrame, control: str, cands: dict[str, pl.DataFrame] | None = None,
              mapper: Mapper | None = None, aigq: Sequence[str] = AIGQ_CHANNELS, confidence: float = 0.95,
              resamples: int = 1000, seed: int = 0) -> pl.DataFrame:
    """One row per arm: users, requests, impressions, clicks, ctr, pvr, uctr (+ Wilson interval), gain vs
    ``control`` (+ paired bootstrap interval), the expected UCTR ``euctr`` (mean over users of 1 − Π(1 − p_click):
    no click noise, the primary figure) and its gain ``egain`` (+ paired bootstrap interval) and, for arms showing AIGQ queries, the discovery shares (needs the
    control arm's candidates ``cands[control]``)."""
    users = imp.select("user_id").unique().sort("user_id")
    ind, exp = {}, {}
    for arm, g in imp.group_by("arm", maintain_order=True):
        # realised: the user clicked at least once; expected: 1 − Π (1 − p_click) over the user's impressions
        per = g.group_by("user_id").agg(c=pl.col("clicked").any(),
                                        e=1.0 - (1.0 - pl.col("p_click").clip(0.0, 1.0 - 1e-12)).log().sum().exp())
        joined = users.join(per, on="user_id", how="left")
        ind[arm[0]] = joined["c"].fill_null(False).to_numpy().astype(np.float64)
        exp[arm[0]] = joined["e"].fill_null(0.0).to_numpy().astype(np.float64)
    if control not in ind:
        raise ValueError(f"control arm {control!r} has no impressions (arms: {sorted(ind)})")
    rows = []
    for arm, g in imp.group_by("arm", maintain_order=True):
        name, x = arm[0], ind[arm[0]]
        lo, hi = wilson(int(x.sum()), len(x), confidence)
        r = {"arm": name, "users": len(x), "requests": g["request_id"].n_unique(), "impressions": g.height,
             "clicks": int(g["clicked"].sum()), "ctr": float(g["clicked"].mean()) if g.height else float("nan"),
             "pvr": float(g["source"].is_in(list(aigq)).mean()) if g.height else float("nan"),
             "uctr": float(x.mean()) if len(x) else float("nan"), "uctr_lo": lo, "uctr_hi": hi}
        e, e_base = exp[name], exp[control].mean()
        r["euctr"] = float(e.mean()) if len(e) else float("nan")
        r["egain"] = float(e.mean() / e_base - 1) if e_base > 0 else float("nan")
        r["egain_lo"], r["egain_hi"] = ((0.0, 0.0) if name == control else
                                        paired_bootstrap_gain(e, exp[control], resamples, confidence, seed))
        base = ind[control].mean()
        r["gain"] = float(x.mean() / base - 1) if base > 0 else float("nan")
        r["gain_lo"], r["gain_hi"] = ((0.0, 0.0) if name == control else
                                      paired_bootstrap_gain(x, ind[control], resamples, confidence, seed))
        if cands is not None and control in cands and name != control and g["source"].is_in(list(aigq)).any():
            shown = g.select("user_id", "day", "query", "source").unique()
            r.update(discovery(shown, cands[control], mapper, aigq))
        rows.append(r)
    return pl.DataFrame(rows, infer_schema_length=None)
