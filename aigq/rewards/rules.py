"""Rule rewards of IL-GRPO (paper §3.5, Eqs. 10, 14, 16): each a small pure function with a hand-worked test.

Query level (one value per generated query q_{i,j}):

* :func:`rouge_l_f` / :func:`rouge_slots` — semantic fidelity: ROUGE-L F between the query at slot j and the
  reference at slot j (position-wise matching, §3.5). Tokens: CJK characters one by one, other words whole
  (``text.tokens``). **Extra slots** (j ≥ len(reference)) get 0: there is nothing to imitate. **Missing slots**
  (fewer queries than the reference) produce no query reward; the format reward's count check penalises them.
* :func:`length_reward` — query consistency: 1 inside [lo, hi] length units, linear decay to 0 over ``slack``
  units outside; empty or over-long (> ``max_chars``) items get 0.
* :func:`ctr_reward` — Eq. 14, r_CTR = clip(γ·p̂, 0, β).
* :func:`trigger_reward` — Eq. 16, ROUGE-L F over behaviour-index sequences (AIGQ-Think).
* :func:`repetition_flags` — per query: 1 if it is an exact duplicate of an earlier query in the list, its
  similarity to the most similar earlier query if that is ≥ threshold (a near-duplicate), else 0.

List level (one value per rollout o_i):

* :func:`format_reward` — R_fmt: the list parses, separators are consistent, no empty / garbage items, expected
  count. 1 for a perfect list, −1 when nothing parses.
* :func:`repetition_reward` — R_rep = −mean(repetition_flags) ∈ [−1, 0]: 0 for a list of distinct queries.
* :func:`diversity` — 1 − mean pairwise similarity ∈ [0, 1] (reported; weighted only if configured).

R_rep and diversity depend on the list's own contents, so they vary across the G lists of one prompt and survive
group normalisation (Eq. 13) — unlike a per-prompt constant, which would cancel out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from aigq.data.prompt import QUERY_END, QUERY_SEP, list_items
from aigq.rewards.text import REPLACEMENT, length_units, ngram_cosine, ngram_ids, to_text, tokens

# similarity(list of texts) → (n, n) matrix of pairwise similarities in [0, 1]
Similarity = Callable[[Sequence[str]], np.ndarray]


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence (dynamic programme, O(|a|·|b|) time, O(|b|) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l_f(generated: Sequence[Any], reference: Sequence[Any], beta: float = 1.0) -> float:
    """ROUGE-L F (Eq. 10's semantic-fidelity term; Eq. 16 over index sequences) of two token sequences:
    P = LCS/|gen|, R = LCS/|ref|, F = (1+β²)·P·R / (R + β²·P); 0 when either is empty or nothing is shared."""
    lcs = lcs_length(generated, reference)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(generated), lcs / len(reference)
    return (1 + beta**2) * p * r / (r + beta**2 * p)


def rouge_slots(generated: Sequence[str], reference: Sequence[str]) -> list[float]:
    """Position-wise ROUGE-L F of each generated query against the reference at the same slot (§3.5 matching);
    slots beyond the reference get 0."""
    ref = [tokens(r) for r in reference]
    return [rouge_l_f(tokens(q), ref[j]) if j < len(ref) else 0.0 for j, q in enumerate(generated)]


def length_reward(query: str, lo: float, hi: float, slack: float, cjk_char_units: float, max_chars: int) -> float:
    """Length constraint of Eq. 10 (shape ours): 1 for lo ≤ units ≤ hi, else max(0, 1 − distance/slack);
    0 for an empty query or one longer than ``max_chars`` characters."""
    text = to_text(query)
    if not text or len(text) > max_chars:
        return 0.0
    n = length_units(text, cjk_char_units)
    if n == 0:
        return 0.0
    d = lo - n if n < lo else n - hi if n > hi else 0.0
    return max(0.0, 1.0 - d / slack)


def ctr_reward(p: float, gamma: float, beta: float) -> float:
    """Eq. 14: r_CTR = Clip(γ·p̂, 0, β); a non-finite p̂ gets 0."""
    if p is None or not math.isfinite(p):
        return 0.0
    return float(min(max(gamma * p, 0.0), beta))


def trigger_reward(generated: Sequence[int], reference: Sequence[int]) -> float:
    """Eq. 16: r_trigger(T_k) = ROUGE-L_F(T_k^gen, T_k^ref) over behaviour-index sequences. Both empty → 1 (the
    model correctly names no trigger); exactly one empty → 0."""
    if not generated and not reference:
        return 1.0
    return rouge_l_f(list(generated), list(reference))


def split_items(text: str) -> list[str]:
    """Every item between ``;`` separators, slot markers / item numbers removed, empty ones kept (``parse_target``
    drops them; format checks need them): ``prompt.list_items``."""
    return list_items(text)


def is_garbage(query: str, max_chars: int) -> bool:
    """A garbage item: longer than ``max_chars``, or holding undecodable bytes (U+FFFD), control characters or lone
    surrogates."""
    return len(query) > max_chars or REPLACEMENT in query or not all(ch.isprintable() for ch in query)


def format_reward(raw: Any, expected: int, max_chars: int) -> float:
    """R_fmt (Eq. 10; checks ours): −1 if the output is not text or no query parses; else
    1 − 0.25·[separators inconsistent] − 0.25·[empty items] − 0.25·[garbage items] − 0.5·min(1, |n − expected|/expected).

    *Separators consistent*: every ``;`` of the text belongs to an exact ``QUERY_SEP`` (" ; ") or is the closing
    ``QUERY_END`` (" ;" at the very end), and no line break splits the list. *Garbage item*: see :func:`is_garbage`."""
    if isinstance(raw, list | tuple):
        text = QUERY_SEP.join(to_text(q) for q in raw)
    elif isinstance(raw, str | bytes | bytearray):
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes | bytearray) else raw
    else:
        return -1.0
    items = split_items(text)
    queries = [q for q in items if q]
    if not queries:
        return -1.0
    r = 1.0
    body = text.rstrip()
    body = body[: -len(QUERY_END)] if body.endswith(QUERY_END) else body
    if body.count(";") != body.count(QUERY_SEP) or "\n" in text.strip():
        r -= 0.25
    if len(queries) < len(items):
        r -= 0.25
    if any(is_garbage(q, max_chars) for q in queries):
        r -= 0.25
    if expected > 0:
        r -= 0.5 * min(1.0, abs(len(queries) - expected) / expected)
    return r


def ngram_similarity(queries: Sequence[str], buckets: int = 1 << 20) -> np.ndarray:
    """Pairwise cosine of character-trigram sets (word unigrams included): the default near-duplicate measure."""
    sets = [ngram_ids(to_text(q).lower(), buckets, 3, 3) for q in queries]
    n = len(sets)
    sim = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            sim[i, j] = sim[j, i] = ngram_cosine(sets[i], sets[j])
    return sim


def repetition_flags(queries: Sequence[str], sim: np.ndarray, threshold: float) -> list[float]:
    """Per-query repetition of Figure 2(b): 1 for an exact (normalised) duplicate of an earlier query, the max
    similarity to earlier queries when it is ≥ ``threshold`` (near-duplicate), else 0. The first query is never
    penalised."""
    seen: set[str] = set()
    out = []
    for j, q in enumerate(queries):
        key = " ".join(tokens(q)) or to_text(q).lower()
        if key in seen:
            out.append(1.0)
        else:
            m = float(sim[j, :j].max()) if j > 0 else 0.0
            out.append(m if m >= threshold else 0.0)
        seen.add(key)
    return out


def repetition_reward(flags: Sequence[float]) -> float:
    """R_rep (Eq. 10): −mean of the per-query repetition flags; 0 for an empty list (its format reward is −1)."""
    return -float(np.mean(flags)) if len(flags) else 0.0


def diversity(sim: np.ndarray) -> float:
    """List diversity: 1 − mean off-diagonal pairwise similarity; 0 for fewer than 2 queries (nothing to vary)."""
    n = sim.shape[0]
    if n < 2:
        return 0.0
    off = (sim.sum() - np.trace(sim)) / (n * (n - 1))
    return float(1.0 - off)
