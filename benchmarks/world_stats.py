"""Calibration statistics of one or more world folders (simulated or imported), next to the real search log's.

Prints one markdown table, one column per world, rows = the statistics of ``../shared/world-calibration.md`` (each
defined in ``aigq/data/world_stats.py``), with the real log's figures as a reference column; then the world v2
targets of issue 17 with pass/fail. Size-dependent statistics (distinct/events, top-1 % traffic, seen-once
traffic, unseen later queries) are computed on a seeded random sample of N query events (default 1,637, the real
log's size) so worlds of any size compare.

    .venv/bin/python benchmarks/world_stats.py outputs/tiny/world outputs/searchlog/world [--sample-events 1637]
        [--seed 0] [--targets] [--json stats.json]

``--targets``: exit 1 when a world misses a target (default: only print).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from aigq.data import world_stats as W
from aigq.data.validate import validate_world

Stats = dict[str, float | int | bool | None]

# The real log's figures, copied from ../shared/world-calibration.md ("real log" column: a public 2011 mobile
# e-commerce search/click log sample, 1,998 rows → 1,637 query events, per-user figures over its 1,035 users with
# complete history). "–": not in that table.
REAL_LOG: dict[str, str] = {
    "queries_per_user": "1.29",
    "single_query_users": "85.5 %",
    "multi_day_users": "8.2 %",
    "light_sessions": "– (target 25–35 %)",
    "repeat_query_rate": "0.9 %",
    "same_leaf": "14 %",
    "same_subtree": "39 %",
    "same_leaf_session": "–",
    "pairs": "–",
    "shared_word": "11.5 %",
    "shared_word_30min": "16 %",
    "words_chars": "1.89 / 11.3",
    "sample": "1,637 (all)",
    "distinct_per_event": "0.74",
    "top1pct_share": "7.3 %",
    "seen_once_share": "60 %",
    "unseen_later_sample": "67.5 %",
    "unseen_later": "67.5 %",
    "impression_ctr": "– (paper ≈ 1 %)",
    "exposures_clicked": "–",
    "leaf_categories": "440",
    "users": "1,035",
    "query_events": "1,637",
    "events": "1,998 rows",
}


def _pct(v: float | int | bool | None) -> str:
    return "–" if v is None else f"{100 * float(v):.1f} %"


def _num(v: float | int | bool | None, digits: int = 2) -> str:
    return "–" if v is None else f"{float(v):.{digits}f}"


def _int(v: float | int | bool | None) -> str:
    return "–" if v is None else f"{int(v):,}"


Row = tuple[str, str, Callable[[Stats], str]]
ROWS: tuple[Row, ...] = (
    ("queries per user (distinct)", "queries_per_user",
     lambda s: f"{_num(s['queries_per_user'])} ({_num(s['distinct_queries_per_user'])})"),
    ("users with exactly 1 query", "single_query_users", lambda s: _pct(s["single_query_users"])),
    ("users active on more than 1 day", "multi_day_users", lambda s: _pct(s["multi_day_users"])),
    ("sessions (requests) of users with ≤ 5 earlier behaviours", "light_sessions", lambda s: _pct(s["light_sessions"])),
    ("repeat-query rate (a user searching the same text again)", "repeat_query_rate",
     lambda s: _pct(s["repeat_query_rate"])),
    ("consecutive different queries in the same leaf category", "same_leaf", lambda s: _pct(s["same_leaf"])),
    ("… in the same subtree (same parent)", "same_subtree", lambda s: _pct(s["same_subtree"])),
    ("… same leaf, within a session", "same_leaf_session", lambda s: _pct(s["same_leaf_session"])),
    ("consecutive different pairs (usable: leaf / subtree / session / ≤ 30 min)", "pairs",
     lambda s: f"{_int(s['pairs'])} ({_int(s['same_leaf_pairs'])} / {_int(s['same_subtree_pairs'])} / "
     f"{_int(s['same_leaf_session_pairs'])} / {_int(s['pairs_30min'])})"),
    ("consecutive different queries sharing a word", "shared_word", lambda s: _pct(s["shared_word"])),
    ("… sharing a word, within 30 min", "shared_word_30min", lambda s: _pct(s["shared_word_30min"])),
    ("words / characters per query", "words_chars",
     lambda s: f"{_num(s['words_per_query'])} / {_num(s['chars_per_query'], 1)}"),
    ("sample size N (query events)", "sample",
     lambda s: _int(s["sample_events"]) + (" (all: fewer than N)" if s["sample_is_all"] else "")),
    ("distinct queries / query events (at N)", "distinct_per_event", lambda s: _num(s["distinct_per_event"])),
    ("traffic share of the top 1 % of queries (at N)", "top1pct_share", lambda s: _pct(s["top1pct_share"])),
    ("traffic from queries seen once (at N)", "seen_once_share", lambda s: _pct(s["seen_once_share"])),
    ("queries of the later 20 % never seen earlier (at N)", "unseen_later_sample",
     lambda s: _pct(s["unseen_later_sample"])),
    ("queries of the later 20 % never seen earlier (whole world)", "unseen_later",
     lambda s: _pct(s["unseen_later"])),
    ("HintQ impression CTR (shown queries clicked)", "impression_ctr", lambda s: _pct(s["impression_ctr"])),
    ("HintQ exposures with ≥ 1 click", "exposures_clicked",
     lambda s: _pct(s["exposures_clicked"]) + (f" of {_int(s['exposures'])}" if s["exposures"] else "")),
    ("leaf categories", "leaf_categories", lambda s: _int(s["leaf_categories"])),
    ("users (with ≥ 1 query event)", "users", lambda s: _int(s["users"])),
    ("query events", "query_events", lambda s: _int(s["query_events"])),
    ("events", "events", lambda s: _int(s["events"])),
)


def stats_table(names: Sequence[str], stats: Sequence[Stats]) -> str:
    """The markdown table: statistic | real log | one column per world."""
    lines = ["| statistic | real log | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for label, key, fmt in ROWS:
        lines.append(f"| {label} | {REAL_LOG[key]} | " + " | ".join(fmt(s) for s in stats) + " |")
    return "\n".join(lines)


def targets_table(names: Sequence[str], stats: Sequence[Stats]) -> tuple[str, bool]:
    """(markdown table of the v2 targets per world, True when every applicable target passes)."""
    checks = [W.check_targets(s) for s in stats]
    lines = ["| world v2 target | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    ok = True
    for i, (key, label, _, _) in enumerate(W.TARGETS):
        cells = []
        for s, c in zip(stats, checks, strict=True):
            passed = c[i][1]
            ok &= passed is not False
            verdict = "n/a" if passed is None else ("pass" if passed else "FAIL")
            cells.append(f"{verdict} ({_num(s[key], 3)})" if passed is not None else verdict)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines), ok


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("worlds", nargs="+", type=Path, help="world folder(s): meta.json + parquet tables")
    ap.add_argument("--sample-events", type=int, default=1637, help="N query events for the size-dependent rows")
    ap.add_argument("--seed", type=int, default=0, help="seed of the N-event sample")
    ap.add_argument("--targets", action="store_true", help="exit 1 when a world misses a v2 target")
    ap.add_argument("--json", type=Path, default=None, help="also write every statistic as JSON here")
    args = ap.parse_args(argv)

    names = [str(w) for w in args.worlds]
    stats = []
    for w in args.worlds:
        tables = validate_world(w, write_quarantine=False).tables
        stats.append(W.world_stats(tables, sample_events=args.sample_events, seed=args.seed))
    print(stats_table(names, stats))
    print()
    table, ok = targets_table(names, stats)
    print(table)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        targets = {n: dict(W.check_targets(s)) for n, s in zip(names, stats, strict=True)}
        args.json.write_text(json.dumps(
            {"sample_events": args.sample_events, "seed": args.seed, "worlds": dict(zip(names, stats, strict=True)),
             "targets": targets}, indent=2))
    return 1 if args.targets and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
