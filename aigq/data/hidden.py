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
    interest: np.ndarray, related: np.ndarray, pop: np.ndarray, slot: np.ndarray, p: ClickParams
) -> np.ndarray:
    """Hidden click probability of a shown query (see module docstring); arrays broadcast together."""
    logit = p.base + p.interest * interest + p.related * related + p.popularity * pop
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

    def features(self, requests: pl.DataFrame) -> pl.DataFrame:
        """``requests`` (user_id, day, query, slot) → + interest, related, pop (unknown query text → 0, 0, 0)."""
        return self.category_features(requests.join(self.queries.drop("parent"), on="query", how="left",
                                                    maintain_order="left"))

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
                interest=(pl.col("weight") * (pl.col("ic") == pl.col("category"))).sum(),
                related=((pl.col("iparent") == pl.col("parent")) & (pl.col("ic") != pl.col("category"))).any(),
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
        return click_probability(
            f["interest"].to_numpy(), f["related"].to_numpy(), f["pop"].to_numpy(), f["slot"].to_numpy(), self.params
        )
