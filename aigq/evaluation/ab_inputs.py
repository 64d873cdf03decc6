"""What the simulated A/B (``aigq.evaluation.ab``) reads from a world and a run: HintQ requests of the evaluation
window, users' contexts as of the morning of a day, the CTR ranker, and the channels' arm lists.

Nothing here reads ``world/hidden`` but :func:`oracle_lists` (the hidden-oracle upper bound, given the hidden model
by :func:`run_from_config`, which hands it to ``ab``, the evaluator).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from aigq.config import AIGQConfig, CTRConfig
from aigq.data.schema import day_expr
from aigq.rewards.context import UserContext, behaviours_table, context_from_row

REQUEST_SCHEMA = {"request_id": pl.Int64, "user_id": pl.Int64, "day": pl.Int32}
# Upper-bound channel sources (issue 17): the users' true queries of the day, and the hidden oracle — the pooled
# candidates of every other channel (and the truth) re-ranked by the hidden click model, best first.
UPPER_TRUTH, UPPER_ORACLE = "truth", "oracle"


def window_requests(tables: dict[str, pl.DataFrame], start_date: str, keys: pl.DataFrame,
                    mode: str = "exposures") -> pl.DataFrame:
    """HintQ requests ``(request_id, user_id, day)`` for the user-days of ``keys`` (user_id, day): the world's own
    HintQ exposure requests on those user-days (``exposures``: id = exposure_id), or exactly one per user-day
    (``user_day``: id = user_id·10⁵ + day)."""
    keys = keys.select(pl.col("user_id").cast(pl.Int64), pl.col("day").cast(pl.Int32)).unique()
    if mode == "user_day":
        return keys.select(request_id=pl.col("user_id") * 100_000 + pl.col("day"), user_id="user_id",
                           day="day").sort("request_id")
    if mode != "exposures":
        raise ValueError(f"unknown request mode {mode!r} (exposures | user_day)")
    if "exposures" not in tables or tables["exposures"].height == 0:
        raise ValueError("the world has no HintQ exposures: use ab.requests=user_day")
    ex = tables["exposures"].select(request_id=pl.col("exposure_id"), user_id=pl.col("user_id"),
                                    day=day_expr(pl.col("ts"), start_date))
    return ex.join(keys, on=["user_id", "day"], how="semi").cast(REQUEST_SCHEMA).sort("request_id")


def morning_contexts(beh: pl.DataFrame, users: pl.DataFrame, pairs: pl.DataFrame, history_len: int,
                     history_days: int) -> list[UserContext]:
    """One context per row of ``pairs`` (user_id, day): profile + the last ``history_len`` behaviours of days
    [day − history_days, day − 1] (nothing of the day itself), most recent first; ``beh`` from
    ``rewards.context.behaviours_table``."""
    p = pairs.select(pl.col("user_id").cast(pl.Int64), pl.col("day").cast(pl.Int32)).with_row_index("_i")
    b = (p.join(beh.select("user_id", "ts", bday="day", btype="type", bcontent="content"), on="user_id")
         .filter((pl.col("bday") < pl.col("day")) & (pl.col("day") - pl.col("bday") <= history_days))
         .sort(["_i", "ts"], descending=[False, True]).group_by("_i", maintain_order=True).head(history_len)
         .group_by("_i", maintain_order=True)
         .agg(behaviours=pl.struct(days_ago=pl.col("day") - pl.col("bday"), type="btype", content="bcontent")))
    prof = users.unique("user_id").select("user_id", "gender", "age", "occupation", "city")
    rows = p.join(b, on="_i", how="left").join(prof, on="user_id", how="left").sort("_i")
    out = []
    for r in rows.iter_rows(named=True):
        profile = {k: r[k] for k in ("gender", "age", "occupation", "city") if r.get(k) is not None}
        out.append(context_from_row(profile, r.get("behaviours")))
    return out


class CTRRanker:
    """HintQ's ranking: the CTR model's p̂(click | user context as of the morning of the day, query)."""

    def __init__(self, scorer: Any, tables: dict[str, pl.DataFrame], start_date: str, cfg: CTRConfig | None = None):
        self.scorer, self.cfg = scorer, cfg or scorer.cfg
        self.beh = behaviours_table(tables, list(self.cfg.behaviour_types), start_date)
        self.users = tables["users"]

    def __call__(self, cands: pl.DataFrame) -> np.ndarray:
        pairs = cands.select("user_id", "day").unique(maintain_order=True).with_row_index("ctx")
        ctxs = morning_contexts(self.beh, self.users, pairs.drop("ctx"), self.cfg.history_len, self.cfg.history_days)
        idx = cands.join(pairs, on=["user_id", "day"], how="left", maintain_order="left")["ctx"].to_numpy()
        return np.asarray(self.scorer.score(ctxs, idx.astype(np.int64), cands["query"].to_list()), dtype=np.float64)


def ab_dir(cfg: AIGQConfig) -> Path:
    return cfg.ab_dir()


def ranker_model(cfg: AIGQConfig, last_train_day: int) -> Path:
    """The CTR model HintQ would rank the test days with: ``ab.ctr_model`` or the newest day ≤ the last train day."""
    if cfg.ab.ctr_model:
        p = Path(cfg.ab.ctr_model)
        if not (p / "model.json").is_file():
            raise FileNotFoundError(f"ab.ctr_model={p} is not a CTR model folder (no model.json)")
        return p
    root = cfg.ctr_root()
    days = sorted(p for p in root.glob("day-*") if (p / "model.json").is_file()
                  and int(p.name[4:]) <= last_train_day) if root.is_dir() else []
    if not days:
        raise FileNotFoundError(f"no CTR model for a day ≤ {last_train_day} under {root}: run `aigq train-ctr --day "
                                f"{last_train_day}` or set ab.ranker=recall")
    return days[-1]


def read_lists(path: Path) -> pl.DataFrame:
    """An arm-lists parquet file, checked against the shared convention."""
    from aigq.evaluation.recommend import ARM_SCHEMA, check_arm_frame

    if not Path(path).is_file():
        raise FileNotFoundError(f"arm lists {path} not found")
    try:
        df = pl.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 — any unreadable file becomes one clear message
        raise ValueError(f"{path}: not a parquet file ({exc})") from None
    return check_arm_frame(df.cast({c: t for c, t in ARM_SCHEMA.items() if c in df.columns}, strict=False))


def is_policy_source(source: str) -> bool:
    """A channel source that decodes an AIGQ policy: ``policy:<variant>:<folder>`` or a policy arm of ``aigq eval``."""
    from aigq.evaluation.recommend import POLICY_ARMS

    return source.startswith("policy:") or source.partition("@")[0] in POLICY_ARMS


def aigq_channels(cfg: AIGQConfig) -> list[str]:
    """Channels counted in PVR and discovery: ``ab.aigq_channels`` + every channel whose source is a policy (an
    arm named ``sft`` decoding a policy folder is AIGQ recall too)."""
    a = cfg.ab
    return list(dict.fromkeys([*a.aigq_channels, *(c for c, src in a.channels.items() if is_policy_source(src))]))


def channel_lists(cfg: AIGQConfig, test: pl.DataFrame, given: dict[str, Path], needed: list[str],
                  say: Callable[[str], None], fresh: bool = False) -> dict[str, pl.DataFrame]:
    """Each needed channel's arm lists: a given file, else the cached ``<ab dir>/lists/<channel>-<arm>.parquet``
    (``…-c<serve.direct_samples>.parquet`` for policy channels; same test rows; ``fresh`` ignores it), else
    generated with ``aigq.evaluation.recommend.arm_lists`` for ``ab.channels[channel]`` and cached."""
    from aigq.evaluation.recommend import arm_frame, arm_lists

    out, cache = {}, ab_dir(cfg) / "lists"
    keys = test.select("user_id", "day")
    # policy channels decode like the Direct cache: greedy + serve.direct_samples sampled lists, by consensus
    n = cfg.serve.direct_samples
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"greedy_lists": 1, "sampled_lists": n,
                                                                     "merge": "consensus"})})
    for ch in needed:
        if ch in given:
            out[ch] = read_lists(given[ch])
            continue
        if ch not in cfg.ab.channels:
            raise ValueError(f"channel {ch!r} has no source: add ab.channels.{ch}=<eval arm> or --lists {ch}=FILE")
        src = cfg.ab.channels[ch]
        if src == UPPER_TRUTH:  # an upper bound: the queries the user really searched / clicked that day
            out[ch] = arm_frame(keys, test["target"].to_list(), cfg.ab.recall_per_channel)
            continue
        if src == UPPER_ORACLE:  # built by the evaluator from the other channels (run_from_config)
            continue
        tag = re.sub(r"[^\w.-]+", "_", src)
        f = cache / (f"{ch}-{tag}-c{n}.parquet" if is_policy_source(src) else f"{ch}-{tag}.parquet")
        if f.is_file() and not fresh:
            df = read_lists(f)
            if df.select("user_id", "day").equals(keys):
                say(f"{ch}: cached lists {f}")
                out[ch] = df
                continue
        say(f"{ch}: generating lists with {src} for {keys.height} user-days")
        df = (policy_folder_lists(cfg, src, test, cfg.ab.recall_per_channel) if src.startswith("policy:")
              else arm_lists(cfg, src, test, cfg.ab.recall_per_channel, say=say))
        cache.mkdir(parents=True, exist_ok=True)
        df.write_parquet(f)
        out[ch] = df
    return out


def policy_folder_lists(cfg: AIGQConfig, source: str, test: pl.DataFrame, k: int) -> pl.DataFrame:
    """``policy:<direct|think>:<folder>`` → that policy's lists for the test prompts (the Direct cache's decoding:
    greedy + ``serve.direct_samples`` sampled lists merged by consensus, set by :func:`channel_lists`)."""
    from aigq.evaluation.policy import generate_lists
    from aigq.evaluation.recommend import arm_frame
    from rollout.engine import make_engine

    _, variant, folder = (source.split(":", 2) + ["", ""])[:3]
    if variant not in ("direct", "think") or not (Path(folder) / "config.json").is_file():
        raise ValueError(f"channel source {source!r}: expected policy:<direct|think>:<policy folder>")
    kind = cfg.eval_engine()
    engine = make_engine(kind, Path(folder), variant=variant, **({"seed": cfg.eval.seed} if kind == "vllm" else {}))
    try:
        max_tokens = cfg.eval.think_max_tokens if variant == "think" else cfg.eval.max_tokens
        lists = generate_lists(engine, test["prompt"].to_list(), cfg, max_tokens, k)
    finally:
        engine.close()
    return arm_frame(test.select("user_id", "day"), lists, k)


def run_from_config(cfg: AIGQConfig, given: dict[str, Path] | None = None,
                    say: Callable[[str], None] | None = None, fresh: bool = False) -> dict[str, Any]:
    """``aigq ab``: the test user-days of ``samples/test.parquet`` → every configured arm → the summary table."""
    from aigq.data.categories import CategoryMapper
    from aigq.data.hidden import HiddenModel
    from aigq.data.validate import validate_world
    from aigq.evaluation import ab

    say = say or (lambda _m: None)
    a = cfg.ab
    if a.control not in a.arms:
        raise ValueError(f"ab.control={a.control!r} is not one of ab.arms ({', '.join(a.arms)})")
    world = cfg.world_dir()
    hidden = HiddenModel(world)  # raises for a world that was not simulated
    v = validate_world(world, write_quarantine=False)
    start, n_days = str(v.meta["start_date"])[:10], int(v.meta["days"])
    test_path = cfg.samples_dir() / "test.parquet"
    if not test_path.is_file():
        raise FileNotFoundError(f"{test_path} not found: run `aigq build-samples` first")
    test = pl.read_parquet(test_path).sort("user_id", "day")
    if a.users:
        keep = test["user_id"].unique().sort().head(a.users)
        test = test.filter(pl.col("user_id").is_in(keep.implode()))
    needed = list(dict.fromkeys(c for arm in a.arms.values() for c in arm))
    channels = channel_lists(cfg, test, dict(given or {}), needed, say, fresh)
    for ch in needed:
        if a.channels.get(ch) == UPPER_ORACLE and ch not in channels:
            channels[ch] = oracle_lists(hidden, test, channels, a.recall_per_channel)
    requests = window_requests(v.tables, start, test.select("user_id", "day"), a.requests)
    ranker, model = None, None
    if a.ranker == "ctr":
        from aigq.rewards.ctr import CTRScorer

        model = ranker_model(cfg, n_days - cfg.samples.test_days)
        ranker = CTRRanker(CTRScorer.load(model), v.tables, start)
    mapper = CategoryMapper.from_world(world, a.category_threshold)
    resolver = ab.QueryResolver.for_hidden(hidden, mapper.map)
    say(f"{requests.height} HintQ requests of {requests['user_id'].n_unique()} users on days "
        f"{sorted(test['day'].unique().to_list())}; ranker {model or 'recall order'}")
    imp = ab.run_ab(channels, a.arms, requests, hidden, resolver, ranker, a.k, a.recall_per_channel, a.seed)
    cands = {a.control: ab.candidates(channels, a.arms[a.control], a.recall_per_channel)}
    table = ab.summarise(imp, a.control, cands, mapper.map, aigq_channels(cfg), a.confidence, a.bootstrap, a.seed)
    out = ab_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    imp.write_parquet(out / "impressions.parquet")
    table.write_parquet(out / "summary.parquet")
    matched = ab.QueryResolver.for_hidden(hidden, mapper.map).resolve(imp["query"].unique().to_list())
    return {"table": table, "impressions": imp, "out": out, "ctr_model": str(model) if model else None,
            "match": dict(matched.group_by("match").len().iter_rows())}


def oracle_lists(hidden: Any, test: pl.DataFrame, channels: dict[str, pl.DataFrame], k: int) -> pl.DataFrame:
    """The hidden oracle's lists: per test user-day, the pooled queries of ``channels`` and of the user's true
    targets, ranked by the hidden p(click | user, day, query, slot 0) — evaluator-only (it reads world/hidden)."""
    from aigq.evaluation.recommend import arm_frame

    keys = test.select(pl.col("user_id").cast(pl.Int64), pl.col("day").cast(pl.Int32))
    pools = [df.select(pl.col("user_id").cast(pl.Int64), pl.col("day").cast(pl.Int32), "queries")
             for df in channels.values()]
    pools.append(keys.with_columns(queries=test["target"].cast(pl.List(pl.String))))
    cand = (pl.concat(pools).explode("queries").drop_nulls("queries").rename({"queries": "query"})
            .unique(["user_id", "day", "query"], maintain_order=True))
    if cand.height == 0:
        return arm_frame(keys, [[] for _ in range(keys.height)], k)
    p = hidden.click_probability(cand.with_columns(slot=pl.lit(0, pl.Int64)))
    best = (cand.with_columns(p=pl.Series(p)).sort(["user_id", "day", "p", "query"],
                                                   descending=[False, False, True, False])
            .group_by("user_id", "day", maintain_order=True).agg(pl.col("query").head(k)))
    lists = keys.join(best, on=["user_id", "day"], how="left", maintain_order="left")["query"]
    return arm_frame(keys, [x if x is not None else [] for x in lists.to_list()], k)
