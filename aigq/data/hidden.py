"""The simulator's hidden user model: who likes what, when, and how they click.

The simulator writes it under ``world/hidden/`` apart from the logs. Nothing that learns — samples, CTR model,
rewards, policy — may read it; only the simulator and the simulated A/B evaluator (a later issue) do, through
:class:`HiddenModel`. The click model is one function, :func:`click_probability`, shared by both so that the A/B
evaluator scores deployed queries exactly as the simulator clicked historical ones:

    p(click | user u, day d, query q, slot s) = bias[s] · σ(base + w_i·interest + w_r·related + w_p·pop)

- ``interest`` = the summed mixture weight of u's interests whose category on day d is q's category (drift included);
- ``related`` = 1 when one of u's interests on day d is a sibling category of q's (same parent), else 0;
- ``pop``     = the query's popularity, log-scaled to [0, 1] over the vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl


@dataclass(frozen=True)
class ClickParams:
    base: float
    interest: float
    related: float
    popularity: float
    position_bias: tuple[float, float, float]


def click_probability(
    interest: np.ndarray, related: np.ndarray, pop: np.ndarray, slot: np.ndarray, p: ClickParams,
    extra: np.ndarray | None = None,
) -> np.ndarray:
    """Hidden click probability of a shown query (see module docstring); arrays broadcast together. ``extra``: a
    further logit term (world v2's taste, ``world_v2.py``)."""
    logit = p.base + p.interest * interest + p.related * related + p.popularity * pop
    if extra is not None:
        logit = logit + extra
    return np.asarray(p.position_bias)[slot] / (1.0 + np.exp(-logit))


def hidden_dir(world: str | Path) -> Path:
    return Path(world) / "hidden"


def write_params(world: str | Path, params: ClickParams) -> None:
    d = hidden_dir(world)
    d.mkdir(parents=True, exist_ok=True)
    (d / "click_model.json").write_text(json.dumps(asdict(params), indent=2))


class HiddenModel:
    """Read-only view of ``world/hidden`` for the simulated A/B evaluator."""

    def __init__(self, world: str | Path):
        d = hidden_dir(world)
        if not (d / "click_model.json").is_file():
            raise FileNotFoundError(f"{world} has no hidden model (only simulated worlds have one)")
        raw = json.loads((d / "click_model.json").read_text())
        raw["position_bias"] = tuple(raw["position_bias"])
        self.params = ClickParams(**raw)
        self.interests = pl.read_parquet(sorted((d / "interests").glob("*.parquet")))
        self.queries = pl.read_parquet(d / "query_popularity.parquet")  # query, category, parent, pop
        self.parents = self.queries.select("category", "parent").unique()
        self.v2: dict | None = None
        if (d / "v2.json").is_file():  # world v2 (world_v2.py): parsed text, composed popularity, taste
            from aigq.data.lexicon import Lexicon

            self.v2 = json.loads((d / "v2.json").read_text())
            self.lexicon = Lexicon.from_world(world)
            self.parents = pl.DataFrame({"category": self.lexicon.leaves, "parent": self.lexicon.parents})
            taste = pl.read_parquet(sorted((d / "taste").glob("*.parquet"))).sort("user_id", "facet")
            self._taste_users = taste["user_id"].unique(maintain_order=True).to_numpy()
            self._fav = taste["value"].to_numpy().reshape(len(self._taste_users), -1)
            self._fval_p = [np.asarray(p) for p in self.v2["fval_p"]]

    def resolve(self, queries: list[str]) -> pl.DataFrame:
        """World v2: text → (query, category, pop, match, v0..v5) by the public lexicon's strict parser (match
        "parsed"; unparseable → null category, pop 0, match "unknown": the base rate)."""
        from aigq.data.concepts import pop_logp

        assert self.v2 is not None, "resolve() is for world v2"
        qs = list(dict.fromkeys(queries))
        T = len(self._fval_p)
        leaf, vals = np.full(len(qs), -1), np.full((len(qs), T), -1)
        for i, q in enumerate(qs):
            hit = self.lexicon.parse(q)
            if hit is not None:
                leaf[i] = hit[0]
                for t, v in hit[1].items():
                    vals[i, t] = v
        ok = leaf >= 0
        pop = np.zeros(len(qs))
        if ok.any():
            lp = pop_logp(np.asarray(self.v2["leaf_p"]), self._fval_p, self.v2["facet_counts"], leaf[ok], vals[ok])
            pop[ok] = np.clip((lp - self.v2["lo"]) / (self.v2["hi"] - self.v2["lo"]), 0.0, 1.0)
        cats = [self.lexicon.leaves[x] if x >= 0 else None for x in leaf]
        return pl.DataFrame({"query": qs, "category": cats, "pop": pop,
                             "match": np.where(ok, "parsed", "unknown"),
                             **{f"v{t}": vals[:, t] for t in range(T)}},
                            schema_overrides={"category": pl.String, "query": pl.String})

    def features(self, requests: pl.DataFrame) -> pl.DataFrame:
        """``requests`` (user_id, day, query, slot) → + interest, related, pop (unknown query text → 0, 0, 0); world
        v2 also + lift (the user's taste lift of the query's facets, 0 when unparseable or τ = 0)."""
        if self.v2 is None:
            return self.category_features(requests.join(self.queries.drop("parent"), on="query", how="left",
                                                        maintain_order="left"))
        from aigq.data.concepts import taste_lift

        res = self.resolve(requests["query"].to_list())
        f = self.category_features(requests.join(res.drop("match"), on="query", how="left", maintain_order="left"))
        vals = f.select(pl.col(f"v{t}").fill_null(-1) for t in range(len(self._fval_p))).to_numpy()
        pos = np.searchsorted(self._taste_users, f["user_id"].to_numpy())
        known = (pos < len(self._taste_users)) & (self._taste_users[np.minimum(pos, len(self._taste_users) - 1)]
                                                  == f["user_id"].to_numpy())
        fav = self._fav[np.minimum(pos, len(self._taste_users) - 1)]
        lift = np.where(known, taste_lift(fav, float(self.v2["taste"]), self._fval_p, vals), 0.0)
        return f.with_columns(lift=pl.Series(lift, dtype=pl.Float64))

    def category_features(self, requests: pl.DataFrame) -> pl.DataFrame:
        """``requests`` (user_id, day, category, pop, …) → + parent, interest, related (null category → 0, 0): the
        same features for text resolved to a leaf category some other way (the simulated A/B's generated queries)."""
        req = requests.with_row_index("_row").join(self.parents, on="category", how="left", maintain_order="left")
        active = self.interests.join(req.select("_row", "user_id", "day"), on="user_id").filter(
            (pl.col("from_day") <= pl.col("day")) & (pl.col("day") <= pl.col("to_day"))
        )
        active = active.join(
            self.parents.rename({"category": "icat", "parent": "iparent"}),
            left_on="category",
            right_on="icat",
            how="left",
        )
        feats = (
            req.select("_row", "category", "parent")
            .join(active.select("_row", pl.col("category").alias("ic"), "iparent", "weight"), on="_row", how="left")
            .group_by("_row")
            .agg(
                # clipped at 0: world v2's satiation rows weigh −1 (v1 weights are all positive)
                interest=(pl.col("weight") * (pl.col("ic") == pl.col("category"))).sum().clip(lower_bound=0.0),
                related=((pl.col("iparent") == pl.col("parent")) & (pl.col("ic") != pl.col("category"))
                         & (pl.col("weight") > 0)).any(),
            )
        )
        return (
            req.join(feats, on="_row", how="left")
            .sort("_row")
            .with_columns(
                pl.col("interest").fill_null(0.0),
                pl.col("related").fill_null(False).cast(pl.Float64),
                pl.col("pop").fill_null(0.0),
            )
            .drop("_row")
        )

    def click_probability(self, requests: pl.DataFrame) -> np.ndarray:
        f = self.features(requests)
        extra = None
        if self.v2 is not None:
            extra = float(self.v2["click_taste"]) * np.clip(f["lift"].to_numpy(), -3.0, 3.0)
        return click_probability(
            f["interest"].to_numpy(), f["related"].to_numpy(), f["pop"].to_numpy(),
            f["slot"].to_numpy().astype(np.int64), self.params, extra,
        )
