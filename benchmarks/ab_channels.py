"""How much of a HintQ channel's simulated UCTR comes from its candidates and how much from the ranker.

Channels: arm-lists parquet files (``NAME=FILE``, e.g. ``<run>/ab/lists/*.parquet``; ``NAME=A+B`` = the union of
several, the first keeping a query), and/or Direct policies decoded here as the Direct cache decodes them
(``--policy NAME=FOLDER``: greedy + N sampled lists merged by consensus, ``rollout.consensus.direct_lists``,
once per N of ``--samples``; channel ``NAME-cN``), and/or ``--truth`` (the test user-days' true queries, a ceiling
for imitation). Each channel's top 3 of its ≤ ``ab.recall_per_channel`` candidates are shown to the world's HintQ
requests of the test days, ordered four ways:

* ``ctr``    — HintQ's CTR model (``--ctr``; default: the A/B's ranker, the run's model of the last train day);
* ``recall`` — the channel's own order (for a policy: its list order, i.e. the list's first 3);
* ``share``  — a transparent rule over the same public information as the CTR model: the share of the user's
  morning behaviours in the query's leaf category (a sibling leaf counts ``--sibling``), each weighted
  exp(−days ago / ``--tau``), ties broken by the CTR model — what the behaviours reveal of the user's categories;
* ``oracle`` — the hidden click probability at slot 0 (an upper bound for any ranker over these candidates).

Per ordering it prints the **expected** UCTR (mean over the requesting users of 1 − Π(1 − p) over their shown
slots, p from the hidden click model with position bias: no click-sampling noise, unlike ``aigq ab``), the mean p of
a shown slot and ``int``, the share of shown queries whose leaf category is one of the user's current interests
(hidden interest > 0). Reads ``world/hidden``: an evaluator, like ``aigq ab``.

    .venv/bin/python benchmarks/ab_channels.py -c configs/tiny_cpu.yaml --truth \\
        coclick=outputs/tiny/ab/lists/coclick-co-click.parquet --policy demo=outputs/tiny/grpo/policy --samples 0,16
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import polars as pl
import typer

app = typer.Typer(add_completion=False)


def policy_channels(cfg, test: pl.DataFrame, name: str, folder: Path, samples: list[int]) -> dict[str, pl.DataFrame]:
    """``NAME-cN`` → the policy's lists for the test prompts, decoded like the Direct cache with N samples."""
    from aigq.evaluation.recommend import arm_frame
    from rollout.consensus import direct_lists
    from rollout.engine import make_engine

    kind = cfg.eval.engine or cfg.rollout.engine
    engine = make_engine(kind, folder, variant="direct", **({"seed": cfg.eval.seed} if kind == "vllm" else {}))
    try:
        prompts, k = test["prompt"].to_list(), cfg.ab.recall_per_channel
        return {f"{name}-c{n}": arm_frame(test, direct_lists(engine, prompts, n, cfg.eval.max_tokens, k,
                                                             seed=cfg.eval.seed), k) for n in samples}
    finally:
        engine.close()


def category_share(ctr, index, cands: pl.DataFrame, tau: float, sibling: float) -> np.ndarray:
    """The ``share`` ordering's score (module docstring) per candidate row; ``ctr`` is the ``CTRRanker`` whose
    behaviours table, users and history settings it reads."""
    from aigq.evaluation.ab_inputs import morning_contexts
    from aigq.rewards.ctr_categories import match_features

    c, L = ctr.cfg, ctr.cfg.history_len
    pairs = cands.select("user_id", "day").unique(maintain_order=True).with_row_index("ctx")
    ctxs = morning_contexts(ctr.beh, ctr.users, pairs.drop("ctx"), L, c.history_days)
    texts: list[str | None] = [None] * (len(ctxs) * L)
    weight = np.zeros((len(ctxs), L))
    for k, uc in enumerate(ctxs):
        for i, (days_ago, _, content) in enumerate(uc.behaviours[:L]):
            texts[k * L + i], weight[k, i] = content, np.exp(-days_ago / tau)
    hl, hp = index.ids(texts)
    idx = cands.join(pairs, on=["user_id", "day"], how="left", maintain_order="left")["ctx"].to_numpy()
    ql, qp = index.ids(cands["query"].to_list())
    m = match_features(ql, qp, hl.reshape(-1, L), hp.reshape(-1, L), idx)  # (N, L, 2): same leaf, sibling leaf
    w = weight[idx]
    return (w * (m[..., 0] + sibling * m[..., 1])).sum(1) / np.maximum(w.sum(1), 1e-9)


@app.command()
def main(channels: Annotated[list[str] | None, typer.Argument(help="NAME=LISTS.parquet[+MORE.parquet] …")] = None,
         config: Annotated[Path, typer.Option("--config", "-c")] = Path("configs/tiny_cpu.yaml"),
         ctr: Annotated[Path | None, typer.Option(help="CTR model folder (default: the A/B's ranker)")] = None,
         policy: Annotated[list[str] | None, typer.Option(help="NAME=POLICY_FOLDER, decoded here")] = None,
         samples: Annotated[str, typer.Option(help="sampled lists per decoding of --policy, comma-separated")] = "0,16",
         truth: Annotated[bool, typer.Option(help="add the test user-days' true queries as a channel")] = False,
         tau: Annotated[float, typer.Option(help="``share`` ordering: recency scale in days")] = 7.0,
         sibling: Annotated[float, typer.Option(help="``share`` ordering: weight of a sibling-leaf behaviour")] = 0.3,
         overrides: Annotated[list[str] | None, typer.Option("--set", help="config override key=value")] = None
         ) -> None:
    from aigq.config import load_config
    from aigq.data.categories import CategoryMapper
    from aigq.data.hidden import HiddenModel
    from aigq.data.validate import validate_world
    from aigq.evaluation import ab
    from aigq.evaluation.ab_inputs import CTRRanker, ranker_model, read_lists, window_requests
    from aigq.rewards.ctr import CTRScorer
    from aigq.rewards.ctr_categories import CategoryIndex

    cfg = load_config(config, overrides or [])
    world = cfg.world_dir()
    hidden, v = HiddenModel(world), validate_world(world, write_quarantine=False)
    start, n_days = str(v.meta["start_date"])[:10], int(v.meta["days"])
    test = pl.read_parquet(cfg.samples_dir() / "test.parquet").sort("user_id", "day").with_columns(
        pl.col("user_id").cast(pl.Int64), pl.col("day").cast(pl.Int32))
    requests = window_requests(v.tables, start, test.select("user_id", "day"), cfg.ab.requests)
    model = ctr or ranker_model(cfg, n_days - cfg.samples.test_days)
    ranker = CTRRanker(CTRScorer.load(model), v.tables, start)
    index = CategoryIndex.from_tables(v.tables, cfg.ctr.category_threshold)
    resolver = ab.QueryResolver.for_hidden(hidden, CategoryMapper.from_world(world, cfg.ab.category_threshold).map)
    users = requests["user_id"].n_unique()

    sets: dict[str, dict[str, pl.DataFrame]] = {}
    if truth:
        sets["truth"] = {"truth": test.select("user_id", "day", queries=pl.col("target"))}
    for spec in channels or []:
        name, _, files = spec.partition("=")
        sets[name] = {f"{name}{i}": read_lists(Path(f)) for i, f in enumerate(files.split("+"))}
    for spec in policy or []:
        name, _, folder = spec.partition("=")
        for ch, frame in policy_channels(cfg, test, name, Path(folder), [int(s) for s in samples.split(",")]).items():
            sets[ch] = {ch: frame}

    def shown_figures(shown: pl.DataFrame) -> str:
        imp = shown.select("user_id", "day", "query", "slot").join(requests, on=["user_id", "day"])
        res = resolver.resolve(imp["query"].to_list()).select("query", "category", "pop")
        f = hidden.category_features(imp.join(res, on="query", how="left", maintain_order="left"))
        p = ab.click_probabilities(imp.select("user_id", "day", "query", "slot"), hidden, resolver)
        miss = imp.with_columns(p=pl.Series(p)).group_by("user_id").agg(m=(1 - pl.col("p")).product())["m"]
        return f"{float((1 - miss).sum() / users):6.3f} {np.mean(p):5.3f} {float((f['interest'] > 0).mean()):4.2f}"

    print(f"{requests.height} requests of {users} users; ranker {model}")
    print(f"{'channel':24s} {'cands/ud':>8s}   " + "   ".join(f"{o:>6s} UCTR  p     int" for o in
                                                             ("ctr", "recall", "share", "oracle")))
    for name, lists in sets.items():
        cands = ab.candidates(lists, list(lists), cfg.ab.recall_per_channel)
        slot0 = cands.select("user_id", "day", "query").with_columns(slot=pl.lit(0, pl.Int64))
        oracle = ab.click_probabilities(slot0, hidden, resolver)
        ctr_s = ranker(cands)  # scored once: the ctr ordering and the share ordering's tie-break
        share_s = category_share(ranker, index, cands, tau, sibling) + 1e-3 * ctr_s
        row = [shown_figures(ab.rank_and_show(cands, None if sc is None else (lambda _c, sc=sc: sc), cfg.ab.k))
               for sc in (ctr_s, None, share_s, oracle)]
        per_ud = cands.group_by("user_id", "day").len()["len"].mean()
        print(f"{name:24s} {per_ud:8.1f}   " + "   ".join(row), flush=True)


if __name__ == "__main__":
    app()
