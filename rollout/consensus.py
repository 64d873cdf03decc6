"""Direct-cache decoding: one list per user from several generations of the policy (pure logic + one engine call).

A tiny greedy Direct policy repeats itself: on the tiny world its greedy list of 10 held 4.5 distinct queries per
user-day, so HintQ's ranker had almost nothing to choose from. Sampling the policy N times and ranking every query by
**how many of the lists hold it** (self-consistency: the policy's own estimate of how likely the user is to want
it) gives a full candidate list ordered by the policy's confidence (``benchmarks/ab_channels.py`` measures it).

``serve.direct_samples`` = N: 0 keeps the single greedy list (de-duplicated); N > 0 adds N lists sampled with the
paper's rollout settings (temperature 1.0, top-k 100) to the greedy one and merges the N + 1 by :func:`consensus`.
The Direct serve app (nearline cache) and the simulated A/B's policy channels decode the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from aigq.data.vocabulary import normalise_query
from rollout.engine import Engine, Sampling


def consensus(lists: Sequence[Sequence[str | None]], k: int) -> list[str]:
    """Queries of several generated lists of one prompt, ranked by the number of lists holding them (a query
    repeated inside one list counts once); ties by first appearance (earlier list, then earlier position). Keys are
    case- and whitespace-insensitive; the first spelling is kept; blanks are dropped; at most ``k``."""
    votes: dict[str, int] = {}
    first: dict[str, tuple[int, int, str]] = {}
    for i, lst in enumerate(lists):
        seen: set[str] = set()
        for j, q in enumerate(lst):
            key = normalise_query(str(q or ""))
            if not key or key in seen:
                continue
            seen.add(key)
            votes[key] = votes.get(key, 0) + 1
            first.setdefault(key, (i, j, str(q).strip()))
    order = sorted(votes, key=lambda x: (-votes[x], first[x][0], first[x][1]))
    return [first[x][2] for x in order[:k]]


def direct_lists(engine: Engine, prompts: list[str], samples: int, max_tokens: int, k: int,
                 seed: int | None = None, temperature: float = 1.0, top_k: int = 100) -> list[list[str]]:
    """One list per prompt: the greedy list, plus ``samples`` sampled lists merged with it by :func:`consensus`."""
    greedy = [g[0].queries for g in engine.generate(prompts, Sampling(n=1, temperature=0.0, max_tokens=max_tokens))]
    if samples <= 0:
        return [consensus([g], k) for g in greedy]
    s = Sampling(n=samples, temperature=temperature, top_k=top_k, max_tokens=max_tokens, seed=seed)
    sampled = engine.generate(prompts, s)
    return [consensus([g] + [r.queries for r in group], k) for g, group in zip(greedy, sampled, strict=True)]
