"""The marked output list ``<q1> q ; <q2> q ; …``: round trip, the earlier numbered and un-numbered formats still
parse, and the parse rate, format reward and IL-GRPO token roles all read items by the same rule."""

from __future__ import annotations

from aigq.data import prompt as P
from aigq.models.generate import parse_stats
from aigq.models.tiny import train_tokenizer
from aigq.rewards.rules import format_reward, split_items
from learner.grpo import SEP
from learner.token_roles import NO_TRIGGER, char_roles, token_roles

QS = ["red sofa", "2.5 inch caster", "lamp"]


def test_marked_round_trip():
    text = P.format_target(QS)
    assert text == "<q1> red sofa ; <q2> 2.5 inch caster ; <q3> lamp ;"
    assert P.parse_target(text) == QS  # a number inside a query ("2.5") is the query's
    assert P.format_target(["a", "b"], start=4) == "<q4> a ; <q5> b ;"
    assert P.format_target([]) == ""
    assert P.slot_tokens(3) == ["<q1>", "<q2>", "<q3>"]
    assert P.parse_target(P.format_target(["x; y"])) == ["x, y"]


def test_earlier_formats_still_parse():
    assert P.parse_target("1. red sofa ; 2. 2.5 inch caster ; 3. lamp") == QS
    assert P.parse_target("red sofa ; lamp ;desk lamp ") == ["red sofa", "lamp", "desk lamp"]
    assert P.parse_target("red sofa ; 2. lamp") == ["red sofa", "lamp"]  # mixed: each item on its own
    assert P.parse_target("3. red sofa ; 7. lamp") == ["red sofa", "lamp"]  # numbering is not checked


def test_closing_separator_is_not_an_item():
    assert P.list_items("<q1> a ; <q2> b ;") == ["a", "b"]
    assert P.list_items("<q1> a ; <q2> b") == ["a", "b"]  # an unclosed list parses too
    assert P.list_items("<q1> a ; ;") == ["a", ""]  # only the last blank piece closes the list
    assert format_reward("<q1> a ; <q2> b ;", 2, 64) == 1.0 == format_reward("<q1> a ; <q2> b", 2, 64)
    assert format_reward("<q1> a ;<q2> b ;", 2, 64) == 0.75  # a separator without its spaces


def test_marker_without_query_is_an_empty_item():
    assert P.list_items("<q1> a ; <q2> ; <q3>") == ["a", "", ""]
    assert P.list_items("1. a ; 2. ; 3.") == ["a", "", ""]
    assert P.parse_target("1. a ; 2. ; 3.") == ["a"]
    assert split_items("<q1> a ; <q2> ") == ["a", ""]
    assert format_reward("<q1> a ; <q2> ", 2, 64) == 1 - 0.25 - 0.5 * 0.5  # empty item + one query short


def test_parse_stats_counts_marked_items():
    full = P.format_target([f"q{j}" for j in range(10)])
    stats = parse_stats([full, full + " ; <q11> extra", full.rsplit(" ; ", 1)[0], full + " ; <q11>"], 10)
    assert stats["parse_rate"] == 0.25 and stats["at_least_rate"] == 0.75


def test_think_slots_run_across_interest_points():
    groups = [((1, 2), ["pool floats", "games"]), ((), ["decor"])]
    text = P.format_think_target(groups)
    assert text == "1,2 => <q1> pool floats ; <q2> games ;\n- => <q3> decor ;"
    assert P.parse_think_target(text) == ("", groups)
    slots, trig = char_roles(text, "think")
    assert {s for s in slots if s != SEP} == {0, 1, 2}
    assert text[trig.index(0):trig.index(0) + 3] == "1,2" and trig.count(0) == 3  # "<q1>" is not a trigger


def test_char_roles_leave_slot_markers_to_sep():
    text = P.format_target(QS)
    slots, _ = char_roles(text)
    spans: dict[int, str] = {}
    for ch, s in zip(text, slots, strict=True):
        if s != SEP:
            spans[s] = spans.get(s, "") + ch
    assert spans == dict(enumerate(QS))
    assert slots[text.index("<q1>")] == slots[text.index("<q3>")] == SEP


def test_token_roles_marked_slots():
    tok = train_tokenizer(iter([P.format_target(["cozy throw blanket", "velvet sofa", "rug", "lamp"])] * 50), 300)
    tok.add_tokens(P.slot_tokens(10))  # as the policy's vocabulary has them
    out = P.format_target(["cozy throw blanket", "velvet sofa", "rug"])
    ids = tok(out)["input_ids"] + [tok.eos_token_id]
    slots, trig = token_roles(tok, ids)
    assert len(slots) == len(ids) and slots[-1] == SEP and set(trig) == {NO_TRIGGER}
    by_slot: dict[int, list[int]] = {}
    for t, s in zip(ids, slots, strict=True):
        by_slot.setdefault(s, []).append(t)
    assert [tok.decode(by_slot[j]).strip() for j in range(3)] == P.parse_target(out)
    assert not any(ch.isdigit() for j in range(3) for ch in tok.decode(by_slot[j]))  # markers are SEP tokens
    assert tok.convert_tokens_to_ids("<q2>") in ids  # each marker is one token
