"""The one prompt and label-list format of AIGQ (paper §3.2, Eq. 1), shared by samples, training and serving.

A prompt is the paper's verbatim example shape::

    Please Recommend the next 10 queries.
    User Profile: { Gender: Female, Age: 44, Occupation: Medical Staff, City: Beijing }.
    User Behavior Sequence: { <1><Today><click> Hand-woven sachet;; <2><1_day_ago><search> flower cake }

Behaviour lines (paper schema ``index | time | behavior type | behavior content``):

* **index** is a unique per-behaviour position, **1 = the most recent** behaviour before the sample's anchor, 2 the
  one before, … (the paper's example repeats ``<1>``; AIGQ-Think triggers are "a sequence of behavior indices", so
  indices must identify single behaviours, and counting back from the present keeps the small indices, i.e. the most
  frequent special tokens, on the behaviours that matter most). Lines are listed in index order, most recent first.
* **time** is the number of days between the behaviour's day and the sample's day: ``Today``, ``1 day ago``,
  ``N days ago``. Behaviours more than ``history_days`` days ago are not shown; at most ``history_len`` (L), the L
  most recent, are.
* compressed (``compress=True``, Eq. 1): ``<{i}><{time}><{type}> {content}`` with the time as one special token
  (``<Today>``, ``<1_day_ago>``, ``<N_days_ago>``); plain: ``{i} | {time} | {type} | {content}``. Either form joins
  behaviours with ``BEHAVIOUR_SEP`` (";; ", our reading of the example).
* the instruction is ``cfg.instruction`` when compressed (instruction pruning) else ``cfg.instruction_plain``, with
  ``{n}`` = ``cfg.label_cap``. Missing profile fields render as ``unknown``.

Each helper has a plain-Python form (serving, tests) and, where the sample builder needs it, a polars expression
form producing byte-identical text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import polars as pl

from aigq.config import SamplesConfig
from aigq.data.schema import EVENT_TYPES

QUERY_SEP = " ; "  # separator of the output query list (training targets, generation parsing)
QUERY_END = " ;"  # ends the list: every item is closed by ";" ("<q1> q1 ; <q2> q2 ;"), so stopping is decided after it
ITEM_MARK = "<q{}>"  # each output item starts with its 1-based slot marker, one added token: "<q1> q1 ; <q2> q2 ; …"
# A leading slot marker, or the earlier "3." item number (old checkpoints' lists still parse).
_ITEM_LEAD = re.compile(r"(?:<q\d+>|\d+\.)(?:\s+|$)")
BEHAVIOUR_SEP = ";; "  # separator of behaviour lines in the prompt
PROFILE_FIELDS = (("Gender", "gender"), ("Age", "age"), ("Occupation", "occupation"), ("City", "city"))
UNKNOWN = "unknown"


# ---------------------------------------------------------------- output list


def format_target(queries: Sequence[str], start: int = 1) -> str:
    """The label list as text: marked items ``<q1> q1 ; <q2> q2 ;`` (slots from ``start``) joined by
    ``QUERY_SEP`` and closed by ``QUERY_END``. A ``;`` inside a query becomes ``,`` and surrounding whitespace is
    stripped, so ``parse_target(format_target(q)) == q`` for clean queries.

    The slot markers are our output serialisation ([GAP]: the paper does not show the list format): each item says
    which slot it fills, so a small policy can count to ``label_cap`` and stop instead of tracking the count of
    separators over a long span. Each marker is one added token (``slot_tokens``), not digits: digits also occur
    inside queries ("ge top loading washer 4.5") and "10" is two digit tokens; with ``3.``-style numbers a tiny
    policy sampled wrong numbers far more often. The closing ``;`` moves the decision to stop from the end of the
    last query's words (where a tiny policy often stopped one item early or ran on) to the item boundary, where
    it reads the last marker like every "which slot next" decision (measured: benchmarks/RESULTS.md, IL-SFT parse
    rate)."""
    body = QUERY_SEP.join(ITEM_MARK.format(j) + " " + q.replace(";", ",").strip() for j, q in enumerate(queries, start))
    return body + QUERY_END if body else body


def slot_tokens(n: int) -> list[str]:
    """The slot markers ``<q1>`` … ``<q{n}>`` of a list of up to ``n`` queries (added to every policy's vocabulary)."""
    return [ITEM_MARK.format(j) for j in range(1, n + 1)]


def item_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character span in ``text`` of every item between ``;`` separators, empty items kept
    (``(s, s)``): the piece without surrounding whitespace and without one leading slot marker (``<q3>``) or item
    number (``3.``, the earlier format) followed by whitespace or the end of the piece. Un-marked items (the first
    format) are taken whole, so old checkpoints' lists still parse; ``2.5 inch caster`` keeps its ``2.5``. A blank
    piece after the last ``;`` is the list's closing ``QUERY_END``, not an item. The one rule behind ``parse_target``,
    the format reward's item checks and IL-GRPO's token → slot roles."""
    spans, pos, sep = [], 0, QUERY_SEP.strip()
    for piece in text.split(sep):
        core = piece.strip()
        start = pos + len(piece) - len(piece.lstrip())
        m = _ITEM_LEAD.match(core)
        if m:
            start, core = start + m.end(), core[m.end():]
        spans.append((start, start + len(core)))
        pos += len(piece) + len(sep)
    if len(spans) > 1 and not text.rsplit(sep, 1)[1].strip():
        spans.pop()  # the closing ";"
    return spans


def list_items(text: str) -> list[str]:
    """Every item of a list text (markers / numbers removed), empty ones kept (``parse_target`` drops them)."""
    return [text[a:b] for a, b in item_spans(text)]


def parse_target(text: str) -> list[str]:
    """Inverse of ``format_target``; lenient: splits on ``;`` (any spacing), removes one leading slot marker or item
    number per item (marked or not, any numbering) and drops empty items."""
    return [q for q in list_items(text) if q]


# ---------------------------------------------------------------- special tokens


def time_text(days_ago: int, compress: bool) -> str:
    """``<Today>`` / ``<1_day_ago>`` / ``<N_days_ago>`` (compressed) or ``Today`` / ``1 day ago`` / ``N days ago``."""
    if compress:
        return "<Today>" if days_ago == 0 else "<1_day_ago>" if days_ago == 1 else f"<{days_ago}_days_ago>"
    return "Today" if days_ago == 0 else "1 day ago" if days_ago == 1 else f"{days_ago} days ago"


def special_tokens(cfg: SamplesConfig) -> list[str]:
    """Tokens added to the vocabulary for the compressed prompt (Eq. 1): ``<1>``…``<L>``, the time tokens up to
    ``<{history_days}_days_ago>``, and one token per behaviour type."""
    idx = [f"<{i}>" for i in range(1, cfg.history_len + 1)]
    times = [time_text(d, True) for d in range(cfg.history_days + 1)]
    return idx + times + [f"<{t}>" for t in EVENT_TYPES]


# ---------------------------------------------------------------- plain-Python rendering


def behaviour_head(index: int, days_ago: int, compress: bool) -> str:
    """The sample-dependent part of a behaviour line: ``<i><time>`` or ``i | time | ``."""
    t = time_text(days_ago, compress)
    return f"<{index}>{t}" if compress else f"{index} | {t} | "


def behaviour_tail(btype: str, content: str, compress: bool) -> str:
    """The behaviour's own part of its line: ``<type> content`` or ``type | content``."""
    return f"<{btype}> {content}" if compress else f"{btype} | {content}"


def format_behaviour(index: int, days_ago: int, btype: str, content: str, compress: bool) -> str:
    return behaviour_head(index, days_ago, compress) + behaviour_tail(btype, content, compress)


def format_profile(profile: Mapping[str, Any]) -> str:
    def val(key: str) -> str:
        v = profile.get(key)
        return UNKNOWN if v is None else str(v)

    return "User Profile: { " + ", ".join(f"{label}: {val(k)}" for label, k in PROFILE_FIELDS) + " }."


def instruction(cfg: SamplesConfig) -> str:
    return (cfg.instruction if cfg.compress else cfg.instruction_plain).format(n=cfg.label_cap)


def _sequence_line(seq: str) -> str:
    return "User Behavior Sequence: { " + seq + " }" if seq else "User Behavior Sequence: { }"


def format_prompt(profile: Mapping[str, Any], behaviours: Sequence[tuple[int, str, str]], cfg: SamplesConfig,
                  count: TokenCounter | None = None, related: Callable[[str], Sequence[str]] | None = None) -> str:
    """The prompt for one user. ``behaviours``: ``(days_ago, type, content)`` of the behaviours strictly before the
    anchor, **most recent first**; those more than ``history_days`` ago are dropped and at most L are shown. With
    ``cfg.related_queries`` > 0, ``related(prompt)`` gives the related queries of the prompt's behaviours (shown by
    ``with_related``; None = none known). With ``cfg.max_prompt_tokens`` the oldest shown behaviours are then dropped
    until it fits (``fit_prompts``; ``count`` defaults to ``approx_tokens``)."""
    shown = [b for b in behaviours if b[0] <= cfg.history_days][: cfg.history_len]
    seq = BEHAVIOUR_SEP.join(format_behaviour(i, d, t, c, cfg.compress) for i, (d, t, c) in enumerate(shown, 1))
    prompt = "\n".join([instruction(cfg), format_profile(profile), _sequence_line(seq)])
    if cfg.related_queries:
        prompt = with_related(prompt, related(prompt) if related is not None else ())
    if cfg.max_prompt_tokens is not None:
        prompt = fit_prompts([prompt], cfg.max_prompt_tokens, count or approx_tokens)[0][0]
    return prompt


# ---------------------------------------------------------------- related queries (samples.related_queries)
#
# Side information (issue 18, GQR / OneSug): one line between the profile and the behaviour sequence,
# ``Related Queries: { q1 ; q2 ; … }`` ("{ }" when none is known), so the behaviour sequence stays the prompt's last
# line and every parser of it (parse_behaviours, keep_recent, the CTR model's context) reads it unchanged.

RELATED_HEAD = "Related Queries: { "


def with_related(prompt: str, queries: Sequence[str]) -> str:
    """``prompt`` with its related-queries line set to ``queries`` (inserted before the behaviour sequence, or
    replacing the line already there). A ``;`` inside a query becomes ``,``."""
    clean = [q.replace(";", ",").strip() for q in queries if q and q.strip()]
    line = RELATED_HEAD + QUERY_SEP.join(clean) + " }" if clean else "Related Queries: { }"
    lines = [ln for ln in prompt.split("\n") if not ln.startswith("Related Queries: {")]
    at = next((i for i, ln in enumerate(lines) if ln.startswith("User Behavior Sequence:")), len(lines))
    return "\n".join([*lines[:at], line, *lines[at:]])


def parse_related(prompt: str) -> list[str]:
    """The queries of the prompt's related-queries line ([] when it has none)."""
    for ln in prompt.split("\n"):
        if ln.startswith("Related Queries: {"):
            body = ln[len("Related Queries: {"):].rsplit("}", 1)[0].strip()
            return [q.strip() for q in body.split(QUERY_SEP.strip()) if q.strip()] if body else []
    return []


# ---------------------------------------------------------------- prompt budget (samples.max_prompt_tokens)
#
# A budget counts the tokens of the model input (``model_input(prompt)``: prompt + output marker). Over budget, the
# oldest behaviours (the last-listed lines) go first; the kept ones keep their indices (1 = most recent), so the
# prompt is exactly the one a shorter history would give. Profile and instruction always stay: a prompt with no
# behaviour left that is still over budget is kept as it is (``fit_prompts`` counts it).

TokenCounter = Callable[[Sequence[str]], list[int]]  # token counts of a batch of model inputs
APPROX_CHARS_PER_TOKEN = 3.0  # ([GAP], ours) see approx_tokens
_TAG = re.compile(r"<[^<>\s]+>")


def approx_tokens(texts: Sequence[str]) -> list[int]:
    """Token counts without a tokenizer: every ``<tag>`` (an Eq. 1 or slot token, one added token each) counts 1,
    the rest ``ceil(characters / APPROX_CHARS_PER_TOKEN)``. 3.0 characters per token is the 1st percentile of
    SmolLM2's tokenizer on the tiny world's prompts (median 3.6; the tiny model's own BPE: 1st percentile 3.5,
    median 4.4), so the budget holds for those tokenizers and leaves the tiny model's prompts ~25 % shorter than
    needed. Used where the policy's tokenizer does not exist yet when samples are built (the tiny model's BPE is
    trained on the samples themselves) and at serving time."""
    out = []
    for t in texts:
        tags = len(_TAG.findall(t))
        out.append(tags + math.ceil(len(_TAG.sub("", t)) / APPROX_CHARS_PER_TOKEN))
    return out


def _split_sequence(prompt: str) -> tuple[str, list[str]] | None:
    head, found, seq = prompt.partition("User Behavior Sequence: { ")
    if not found:
        return None
    seq = seq.rsplit(" }", 1)[0]
    return head, seq.split(BEHAVIOUR_SEP) if seq.strip() else []


def keep_recent(prompt: str, k: int) -> str:
    """The prompt with only its ``k`` most recent behaviours (the first ``k`` lines; indices unchanged)."""
    parts = _split_sequence(prompt)
    if parts is None:
        return prompt
    head, lines = parts
    return head + _sequence_line(BEHAVIOUR_SEP.join(lines[: max(k, 0)]))


def fit_prompts(prompts: Sequence[str], max_tokens: int, count: TokenCounter = approx_tokens
                ) -> tuple[list[str], list[int | None]]:
    """Each prompt cut to ``max_tokens`` tokens of model input by keeping its most recent behaviours: the largest
    number k of them that fits (binary search, one batched ``count`` call per round, ~log2(L) rounds). Returns the
    prompts and, per prompt, the behaviours kept (None: it fitted untouched)."""
    out, kept = list(prompts), [None] * len(prompts)
    sizes = count([model_input(p) for p in prompts]) if prompts else []
    todo: dict[int, list[int]] = {}  # prompt index → [lo (fits or 0), hi (does not fit)]
    for i, (p, n) in enumerate(zip(prompts, sizes, strict=True)):
        if n > max_tokens:
            parts = _split_sequence(p)
            todo[i] = [0, len(parts[1]) if parts else 0]
    while any(hi - lo > 1 for lo, hi in todo.values()):
        probe = {i: (lo + hi) // 2 for i, (lo, hi) in todo.items() if hi - lo > 1}
        sized = count([model_input(keep_recent(prompts[i], k)) for i, k in probe.items()])
        for (i, k), n in zip(probe.items(), sized, strict=True):
            todo[i][0 if n <= max_tokens else 1] = k
    for i, (lo, _hi) in todo.items():
        out[i], kept[i] = keep_recent(prompts[i], lo), lo
    return out, kept


# ---------------------------------------------------------------- polars expressions (same text)


def behaviour_tail_expr(btype: pl.Expr, content: pl.Expr, compress: bool) -> pl.Expr:
    """Expression form of ``behaviour_tail`` (computed once per behaviour)."""
    if compress:
        return pl.concat_str([pl.lit("<"), btype, pl.lit("> "), content])
    return pl.concat_str([btype, content], separator=" | ")


def behaviour_head_expr(index: pl.Expr, days_ago: pl.Expr, cfg: SamplesConfig) -> pl.Expr:
    """Expression form of ``behaviour_head`` for 1 ≤ index ≤ L and 0 ≤ days_ago ≤ history_days (out of range is
    an error): a gather from the table of every possible head, so the text is exactly the Python helper's."""
    n_days = cfg.history_days + 1
    heads = [behaviour_head(i, d, cfg.compress) for i in range(cfg.history_len + 1) for d in range(n_days)]
    return pl.lit(pl.Series(heads, dtype=pl.String)).gather(index.cast(pl.Int64) * n_days + days_ago)


def profile_expr() -> pl.Expr:
    """Expression form of ``format_profile`` over the USERS columns gender, age, occupation, city."""
    parts: list[pl.Expr] = []
    for n, (label, key) in enumerate(PROFILE_FIELDS):
        parts += [pl.lit(("" if n == 0 else ", ") + f"{label}: "), pl.col(key).cast(pl.String).fill_null(UNKNOWN)]
    return pl.concat_str([pl.lit("User Profile: { "), *parts, pl.lit(" }.")])


def prompt_expr(profile: pl.Expr, sequence: pl.Expr, cfg: SamplesConfig) -> pl.Expr:
    """Expression form of ``format_prompt``: ``sequence`` is the already joined behaviour text ("" when none)."""
    seq = (
        pl.when(sequence.fill_null("") == "")
        .then(pl.lit("User Behavior Sequence: { }"))
        .otherwise(pl.concat_str([pl.lit("User Behavior Sequence: { "), sequence, pl.lit(" }")]))
    )
    return pl.concat_str([pl.lit(instruction(cfg)), profile, seq], separator="\n")


# ---------------------------------------------------------------- model input and AIGQ-Think output (issue 3)
#
# Training, rollout and serving all feed the model ``model_input(prompt)`` and read its text back with
# ``parse_output``. A Direct output is ``format_target(queries)``. A Think output (§3.4, Eqs. 8-9) is the reasoning
# trace followed by the structured prediction, one interest point (T_k → Q_k) per line ([GAP]: serialisation ours):
#
#     <think> #1 search pool floats: same interest. </think>
#     1 => <q1> pool floats ; <q2> outdoor lawn games
#     - => <q3> round kids wall décor
#
# ``T_k`` is the trigger behaviour indices (``-`` when none), ``Q_k`` a ``format_target`` list whose slot markers
# continue across lines (the position in the whole ordered list, IL-GRPO's slot).

OUTPUT_PREFIX = "\nOutput: "  # the paper's "Output:" marker; the model writes its list after it
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"  # the reasoning span ("Reason Token", Fig. 2b); added as tokens
TRIGGER_ARROW = " => "  # between T_k and Q_k on one line
NO_TRIGGER = "-"  # T_k of an interest point without trigger behaviours
Group = tuple[tuple[int, ...], list[str]]


def model_input(prompt: str) -> str:
    """What the policy is conditioned on: the prompt plus the output marker."""
    return prompt + OUTPUT_PREFIX


def output_special_tokens(label_cap: int, think: bool) -> list[str]:
    """Tokens of the output format added to the policy's vocabulary next to ``special_tokens``: the slot markers
    (every policy) and, for Think, the reasoning span."""
    return slot_tokens(label_cap) + ([THINK_OPEN, THINK_CLOSE] if think else [])


def interest_groups(queries: Sequence[str], triggers: Sequence[Sequence[int]]) -> list[Group]:
    """Think's interest points (T_k, Q_k): maximal runs of consecutive label queries with the same trigger set, so
    concatenating the Q_k gives back the ordered label list (IL-GRPO's position-wise matching still holds)."""
    groups: list[Group] = []
    for q, t in zip(queries, triggers, strict=True):
        key = tuple(int(i) for i in t)
        if groups and groups[-1][0] == key:
            groups[-1][1].append(q)
        else:
            groups.append((key, [q]))
    return groups


def format_think_target(groups: Sequence[Group], rationales: Sequence[str] | None = None) -> str:
    """The Think output: ``<think> r_1 … r_K </think>`` (omitted when ``rationales`` is None: Think without reasoning
    augmentation), then one ``T_k => Q_k`` line per interest point."""
    starts = [1 + sum(len(q) for _, q in groups[:k]) for k in range(len(groups))]  # numbers run across lines
    lines = [(",".join(map(str, t)) or NO_TRIGGER) + TRIGGER_ARROW + format_target(q, s)
             for (t, q), s in zip(groups, starts, strict=True)]
    if rationales is not None:
        reasoning = " ".join(r.replace(THINK_CLOSE, "").replace("\n", " ").strip() for r in rationales)
        lines.insert(0, f"{THINK_OPEN} {reasoning} {THINK_CLOSE}")
    return "\n".join(lines)


def parse_think_target(text: str) -> tuple[str, list[Group]]:
    """Inverse of ``format_think_target``, lenient: (reasoning, groups). An unclosed reasoning span has no groups;
    a line without ``=>`` is a group with no triggers; non-numeric trigger pieces are dropped."""
    reasoning, body = "", text
    if THINK_OPEN in text:
        head, _, rest = text.partition(THINK_OPEN)
        reasoning, closed, body = rest.partition(THINK_CLOSE)
        if not closed:
            return reasoning.strip(), []
        body = head + body
    groups: list[Group] = []
    for line in body.split("\n"):
        if not line.strip():
            continue
        trig, arrow, rest = line.partition(TRIGGER_ARROW.strip())
        if not arrow:
            trig, rest = "", line
        idx = tuple(int(p) for p in trig.split(",") if p.strip().isdigit())
        queries = parse_target(rest)
        if queries:
            groups.append((idx, queries))
    return reasoning.strip(), groups


def parse_output(text: str, variant: str = "direct") -> list[str]:
    """The ordered query list of a model output: Direct → ``parse_target``; Think → the Q_k concatenated."""
    if variant == "think":
        return [q for _, qs in parse_think_target(text)[1] for q in qs]
    return parse_target(text)


def parse_behaviours(prompt: str) -> dict[int, tuple[str, str, str]]:
    """The prompt's behaviour lines as ``index → (time text, type, content)`` (compressed or plain form); the time
    text is as written (``<1_day_ago>`` or ``1 day ago``). Lines that do not parse are skipped."""
    _, found, seq = prompt.partition("User Behavior Sequence: { ")
    if not found:
        return {}
    seq = seq.rsplit(" }", 1)[0]
    out: dict[int, tuple[str, str, str]] = {}
    for line in seq.split(BEHAVIOUR_SEP) if seq.strip() else []:
        m = _COMPRESSED_LINE.match(line) or _PLAIN_LINE.match(line)
        if m:
            out[int(m.group(1))] = (m.group(2), m.group(3), m.group(4))
    return out


_COMPRESSED_LINE = re.compile(r"^<(\d+)>(<[^>]+>)<(\w+)> (.*)$", re.S)
_PLAIN_LINE = re.compile(r"^(\d+) \| (.+?) \| (\w+) \| (.*)$", re.S)
