"""How much of a HintQ channel's simulated UCTR comes from its candidates and how much from the ranker.

For each channel (an arm-lists parquet, e.g. ``<run>/ab/lists/*.parquet``; ``A+B`` = the union of several, the first
keeping a query) this shows the top 3 of its candidates (≤ ``ab.recall_per_channel`` per channel) to the world's
HintQ requests on the test days, ordered three ways:

* ``ctr``    — HintQ's CTR model (``--ctr``; default: the run's newest model of the last train day), as ``aigq ab``;
* ``recall`` — the channel's own order;
* ``oracle`` — the hidden click probability at slot 0 (an upper bound for any ranker over these candidates);

and prints the **expected** UCTR — mean over the requesting users of 1 − Π(1 − p) over their shown slots, p from the
hidden click model with position bias — which has no sampling noise (``aigq ab`` draws the clicks) — plus the
mean hidden p of a shown slot and the distinct candidates per user-day. Reads ``world/hidden``: an evaluator.

    .venv/bin/python benchmarks/ab_channels.py -c configs/tiny_cpu.yaml coclick=outputs/tiny/ab/lists/coclick-co-click-c16.parquet \
        direct=outputs/tiny/ab/lists/direct-direct-il-sft+il-grpo-c16.parquet [--ctr outputs/tiny/ctr/day-030]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import polars as pl
import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(channels: Annotated[list[str], typer.Argument(help="NAME=LISTS.parquet[+MORE.parquet] …")],
         config: Annotated[Path, typer.Option("--config", "-c")] = Path("configs/tiny_cpu.yaml"),
         ctr: Annotated[Path | None, typer.Option(help="CTR model folder (default: the A/B's ranker)")] = None,
         overrides: Annotated[list[str] | None, typer.Option("--set", help="config override key=value")] = None
         ) -> None:
    from aigq.config import load_config
    from aigq.data.hidden import HiddenModel
    from aigq.data.validate import validate_world
    from aigq.evaluation import ab
    from aigq.evaluation.ab_inputs import CTRRanker, ranker_model, read_lists, window_requests
    from aigq.evaluation.categories import CategoryMapper
    from aigq.rewards.ctr import CTRScorer

    cfg = load_config(config, overrides or [])
    world = cfg.world_dir()
    hidden, v = HiddenModel(world), validate_world(world, write_quarantine=False)
    start, n_days = str(v.meta["start_date"])[:10], int(v.meta["days"])
    test = pl.read_parquet(cfg.samples_dir() / "test.parquet").sort("user_id", "day")
    requests = window_requests(v.tables, start, test.select("user_id", "day"), cfg.ab.requests)
    model = ctr or ranker_model(cfg, n_days - cfg.samples.test_days)
    ranker = CTRRanker(CTRScorer.load(model), v.tables, start)
    resolver = ab.QueryResolver.for_hidden(hidden, CategoryMapper.from_world(world, cfg.ab.category_threshold).map)
    users = requests["user_id"].n_unique()
    print(f"{requests.height} requests of {users} users; ranker {model}")
    print(f"{'channel':24s} {'cands/ud':>8s}   " + "   ".join(f"{o:>6s} UCTR  p" for o in ("ctr", "recall", "oracle")))

    def expected(shown: pl.DataFrame) -> tuple[float, float]:
        imp = shown.select("user_id", "day", "query", "slot").join(requests, on=["user_id", "day"])
        p = ab.click_probabilities(imp.select("user_id", "day", "query", "slot"), hidden, resolver)
        per_user = imp.with_columns(p=pl.Series(p)).group_by("user_id").agg(miss=(1 - pl.col("p")).product())
        return float((1 - per_user["miss"]).sum() / users), float(np.mean(p)) if len(p) else float("nan")

    for spec in channels:
        name, _, files = spec.partition("=")
        lists = {f"{name}{i}": read_lists(Path(f)) for i, f in enumerate(files.split("+"))}
        cands = ab.candidates(lists, list(lists), cfg.ab.recall_per_channel)
        slot0 = cands.select("user_id", "day", "query").with_columns(slot=pl.lit(0, pl.Int64))
        truth = pl.Series(ab.click_probabilities(slot0, hidden, resolver))
        row = []
        for rk in (ranker, None, lambda _c, t=truth: t.to_numpy()):
            u, p = expected(ab.rank_and_show(cands, rk, cfg.ab.k))
            row.append(f"{u:6.3f} {p:5.3f}")
        per_ud = cands.group_by("user_id", "day").len()["len"].mean()
        print(f"{name:24s} {per_ud:8.1f}   " + "   ".join(row))


if __name__ == "__main__":
    app()
