"""Whether generated query lists parse (generation itself: ``rollout.engine``)."""

from __future__ import annotations

from collections.abc import Sequence

from aigq.data import prompt as P


def full_list(text: str, expected: int) -> bool:
    """A Direct output that parses strictly: exactly ``expected`` items between separators, none empty (a slot
    marker alone, ``<q3>``, is an empty item and makes the list malformed)."""
    items = P.list_items(text)
    return len(items) == expected and all(items)


def parse_stats(texts: Sequence[str], expected: int, variant: str = "direct") -> dict[str, float]:
    """``parse_rate``: share of outputs that parse into exactly ``expected`` non-empty queries (Direct:
    :func:`full_list`); for Think, share with a closed reasoning span (when present) and at least one interest
    point. ``at_least_rate``: share with at least ``expected`` queries (a consumer taking the first ``expected``
    gets a full list). Plus the mean count and the share of outputs with duplicate queries."""
    if not texts:
        return {"parse_rate": 0.0, "at_least_rate": 0.0, "mean_queries": 0.0, "duplicate_share": 0.0}
    ok, counts, dups = 0, [], 0
    for text in texts:
        queries = P.parse_output(text, variant)
        counts.append(len(queries))
        dups += len(set(queries)) < len(queries)
        if variant == "think":
            open_ = P.THINK_OPEN in text
            ok += bool(queries) and (not open_ or P.THINK_CLOSE in text)
        else:
            ok += full_list(text, expected)
    n = len(texts)
    return {"parse_rate": ok / n, "at_least_rate": sum(c >= expected for c in counts) / n,
            "mean_queries": sum(counts) / n, "duplicate_share": dups / n}
