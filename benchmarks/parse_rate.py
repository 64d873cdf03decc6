"""Parse rate of a trained Direct policy's sampled lists, over several seeds, with the failures classified.

Samples one list per test user the way ``aigq sft`` does after training (``actors.sft.sample_lists``: the
transformers engine, temperature 1.0, top-k 100 unless overridden) and prints, per seed, the share of lists with
exactly ``--expected`` non-empty queries, then what went wrong in the others:

* ``markers``: the slot markers (``<q1>``… or the older ``1.``-style numbers) are not 1, 2, 3, … in order;
* ``stop@N``: markers in order but the list holds N items.

    .venv/bin/python benchmarks/parse_rate.py outputs/tiny/sft/policy --samples outputs/tiny/samples --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from aigq.data import prompt as P
from aigq.models.generate import full_list, parse_stats
from learner import data as D
from rollout.engine import Sampling, make_engine

_MARK = re.compile(r"<q(\d+)>|(?:^|; )(\d+)\.")


def failure_kind(text: str, expected: int) -> str | None:
    if full_list(text, expected):
        return None
    items = P.list_items(text)
    marks = [int(a or b) for a, b in _MARK.findall(text)]
    if marks != list(range(1, len(marks) + 1)):
        return "markers"
    return f"stop@{len(items)}" + ("+empty" if not all(items) else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy", type=Path)
    ap.add_argument("--samples", type=Path, default=Path("outputs/tiny/samples"))
    ap.add_argument("--n", type=int, default=1000, help="test users (one list each; capped by the test split)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--expected", type=int, default=10)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=128)
    a = ap.parse_args()

    prompts = D.first_test_day_per_user(D.read_samples(a.samples / "test.parquet"), a.n)["prompt"].to_list()
    engine = make_engine("transformers", a.policy, variant="direct", dtype="float32")
    total, ok, kinds = 0, 0, Counter()
    for seed in (int(s) for s in a.seeds.split(",")):
        sampling = Sampling(n=1, temperature=a.temperature, top_k=a.top_k, max_tokens=a.max_tokens, seed=seed)
        texts = [g[0].text for g in engine.generate(prompts, sampling)]
        stats = parse_stats(texts, a.expected)
        seed_kinds = Counter(k for k in (failure_kind(t, a.expected) for t in texts) if k)
        print(f"seed {seed}: parse rate {stats['parse_rate']:.1%} of {len(texts)} lists, "
              f"≥ {a.expected}: {stats['at_least_rate']:.1%}, failures {dict(seed_kinds)}")
        total, ok, kinds = total + len(texts), ok + round(stats["parse_rate"] * len(texts)), kinds + seed_kinds
    print(f"all seeds: parse rate {ok / total:.1%} of {total} lists; failures {dict(kinds)}")


if __name__ == "__main__":
    main()
