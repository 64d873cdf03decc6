"""Token → query-slot / trigger roles agree with the list parsers the rewards use."""

from __future__ import annotations

from aigq.data import prompt as P
from aigq.models.tiny import train_tokenizer
from learner.grpo import SEP
from learner.token_roles import NO_TRIGGER, char_roles, token_roles


def _spans(text, roles):
    out: dict[int, str] = {}
    for ch, r in zip(text, roles, strict=True):
        if r >= 0:
            out[r] = out.get(r, "") + ch
    return out


def test_direct_char_roles_follow_parse_target():
    text = " red sofa ;  ; lamp ;desk lamp "
    slots, trig = char_roles(text)
    assert _spans(text, slots) == dict(enumerate(P.parse_target(text))) == {0: "red sofa", 1: "lamp", 2: "desk lamp"}
    assert all(s == SEP for ch, s in zip(text, slots, strict=True) if ch == ";") and set(trig) == {NO_TRIGGER}
    assert slots[0] == slots[-1] == SEP and slots[text.index("sofa") - 1] == 0  # inner space is the query's


def test_think_char_roles_follow_parse_think_target():
    text = "<think> 1 is a search </think>\n1,2 => pool floats ; games\n- => decor\nnoise line\n3 =>  ; "
    slots, trig = char_roles(text, "think")
    assert _spans(text, slots) == dict(enumerate(P.parse_output(text, "think")))
    assert _spans(text, slots) == {0: "pool floats", 1: "games", 2: "decor", 3: "noise line"}
    assert _spans(text, trig) == {0: "1,2"}  # "-" has no indices; "3 =>" has no queries, so no group
    reasoning = text.index("1 is")
    assert slots[reasoning] == SEP and trig[reasoning] == NO_TRIGGER
    # an unclosed reasoning span parses to nothing: every token is SEP
    assert set(char_roles("<think> still thinking 1 => a ; b", "think")[0]) == {SEP}


def test_token_roles_cover_each_query_with_its_own_tokens():
    texts = ["cozy throw blanket ; velvet sofa ; 2 => floor lamp ; rug"] * 50
    tok = train_tokenizer(iter(texts), 300)
    out = "cozy throw blanket ; velvet sofa ; rug"
    ids = tok(out)["input_ids"] + [tok.eos_token_id]
    slots, trig = token_roles(tok, ids)
    assert len(slots) == len(ids) and slots[-1] == SEP and set(trig) == {NO_TRIGGER}
    by_slot: dict[int, str] = {}
    for t, s in zip(ids, slots, strict=True):
        if s >= 0:
            by_slot[s] = by_slot.get(s, "") + tok.decode([t])
    assert [by_slot[j].strip(" ;") for j in sorted(by_slot)] == P.parse_target(out)
    think = "1 => cozy throw blanket ; rug\n- => velvet sofa"
    ids = tok(think)["input_ids"]
    slots, trig = token_roles(tok, ids, "think")
    assert tok.decode([t for t, k in zip(ids, trig, strict=True) if k == 0]).strip() == "1"
    assert max(slots) == 2 and all(s == SEP for s, k in zip(slots, trig, strict=True) if k >= 0)
