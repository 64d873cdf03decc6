"""Which generated token belongs to which query slot (and, for AIGQ-Think, to which trigger set), so Eq. 11's
per-query advantage reaches only that query's tokens and Eq. 17's trigger advantage only the trigger tokens.

The rule mirrors the parsers exactly (``prompt.parse_target`` / ``parse_think_target``), so slot j here is query j
of the list the reward actors scored: characters of the j-th non-empty parsed query → slot j; characters of the
trigger indices of the k-th parsed interest point → trigger k; everything else (separators, slot markers such as
``<q3>``, whitespace, the Think reasoning span, EOS, text after an unclosed ``<think>``) → ``SEP``. A token takes
the role of its characters: any trigger character → that trigger, else the first query slot among its characters,
else ``SEP``. Token → character spans come from decoding growing prefixes of the generated ids.
"""

from __future__ import annotations

from collections.abc import Sequence

from aigq.data import prompt as P
from learner.grpo import SEP

NO_TRIGGER = -1


def _query_chars(text: str, offset: int, first_slot: int, slots: list[int]) -> int:
    """Assign slots to the non-empty items of ``text`` (``prompt.item_spans``, the rule ``parse_target`` uses:
    slot markers such as ``<q3>`` are not part of the query and stay SEP); returns the next free slot index."""
    j = first_slot
    for a, b in P.item_spans(text):
        if b > a:
            for c in range(a, b):
                slots[offset + c] = j
            j += 1
    return j


def char_roles(text: str, variant: str = "direct") -> tuple[list[int], list[int]]:
    """Per character of ``text``: (query slot or SEP, trigger group or NO_TRIGGER)."""
    slots, trig = [SEP] * len(text), [NO_TRIGGER] * len(text)
    if variant != "think":
        _query_chars(text, 0, 0, slots)
        return slots, trig
    segments = [(text, 0)]  # (body text, offset of its first character)
    if P.THINK_OPEN in text:
        head, _, rest = text.partition(P.THINK_OPEN)
        _, closed, tail = rest.partition(P.THINK_CLOSE)
        if not closed:
            return slots, trig
        segments = [(head, 0), (tail, len(text) - len(tail))]
    # parse_think_target works on head + tail joined; lines may span the join, so map body positions back
    body = "".join(s for s, _ in segments)
    where = [off + i for s, off in segments for i in range(len(s))]
    arrow = P.TRIGGER_ARROW.strip()
    j, k, pos = 0, 0, 0
    for line in body.split("\n"):
        if line.strip():
            t_part, has_arrow, q_part = line.partition(arrow)
            q_off = pos + len(t_part) + len(arrow) if has_arrow else pos
            if not has_arrow:
                q_part = line
            if P.parse_target(q_part):
                local = [SEP] * len(q_part)
                j = _query_chars(q_part, 0, j, local)
                for c, s in enumerate(local):
                    slots[where[q_off + c]] = s
                if has_arrow and any(p.strip().isdigit() for p in t_part.split(",")):
                    for c in range(len(t_part)):
                        if not t_part[c].isspace():
                            trig[where[pos + c]] = k
                k += 1
        pos += len(line) + 1
    return slots, trig


def token_roles(tokenizer, token_ids: Sequence[int], variant: str = "direct") -> tuple[list[int], list[int]]:
    """Per generated token: (query slot or SEP, trigger group or NO_TRIGGER). EOS/pad tokens are SEP."""
    drop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    kept = [t for t in token_ids if t not in drop]
    text = tokenizer.decode(kept, skip_special_tokens=False)
    slots_c, trig_c = char_roles(text, variant)
    ends, acc = [], []
    for t in token_ids:
        if t not in drop:
            acc.append(t)
        ends.append(min(len(tokenizer.decode(acc, skip_special_tokens=False)), len(text)) if acc else 0)
    slots, trig, start = [], [], 0
    for end in ends:
        span = range(start, max(start, end))
        t_hits = [trig_c[c] for c in span if trig_c[c] != NO_TRIGGER]
        s_hits = [slots_c[c] for c in span if slots_c[c] != SEP]
        trig.append(t_hits[0] if t_hits else NO_TRIGGER)
        slots.append(SEP if t_hits or not s_hits else s_hits[0])
        start = max(start, end)
    return slots, trig
