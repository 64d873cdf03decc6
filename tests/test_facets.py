"""The strong transparent baselines of issue 17 (aigq/evaluation/facets.py): hand-computed shares and candidates,
strict back-off, and the arms end to end on a small world-v2 run."""

from __future__ import annotations

import pytest

from aigq.config import SamplesConfig, build_config
from aigq.data import prompt as P
from aigq.data.lexicon import FACET_WORDS, build_lexicon
from aigq.evaluation.baselines import CoClick
from aigq.evaluation.facets import CoClickBackoff, FacetRule, Understanding, shares

COLOUR, MATERIAL = list(FACET_WORDS).index("colour"), list(FACET_WORDS).index("material")
GREY, BLUE = FACET_WORDS["colour"].index("grey"), FACET_WORDS["colour"].index("blue")
OAK = FACET_WORDS["material"].index("oak")


def _prompt(*behaviours: tuple[str, str]) -> str:
    return P.format_prompt({"gender": "Female"}, [(1, t, c) for t, c in behaviours], SamplesConfig())


@pytest.fixture
def und() -> Understanding:
    return Understanding(build_lexicon(["Sofas", "Coffee & Cocktail Tables", "Area Rugs"]), None)


def test_understanding_parses_queries_and_item_descriptions(und):
    assert und.parse("grey velvet sofas") == ("Sofas", {COLOUR: GREY, MATERIAL: FACET_WORDS["material"].index("velvet")})
    assert und.parse("grey oak coffee table by Loxley") == ("Coffee Tables", {COLOUR: GREY, MATERIAL: OAK})
    assert und.parse("comfy sofa") == (None, {})


def test_shares_weight_recent_behaviours_by_decay(und):
    # most recent first: sofa (w 1), grey sofa (w 0.5), blue oak coffee table (w 0.25)
    prompt = _prompt(("search", "sofa"), ("search", "grey sofa"), ("click", "blue oak coffee table by Andover"))
    leaf, facet = shares(und, prompt, history=10, decay=0.5)
    assert leaf == pytest.approx({"Sofas": 1.5 / 1.75, "Coffee Tables": 0.25 / 1.75})
    assert facet[COLOUR] == pytest.approx({GREY: 0.5 / 0.75, BLUE: 0.25 / 0.75})
    assert facet[MATERIAL] == pytest.approx({OAK: 1.0})


def test_facet_rule_composes_the_users_leaf_with_their_top_facets(und):
    rule = FacetRule(und, {"Sofas": [("leather sofa", 0.5)]}, k_prior=[0.5, 0.3, 0.2], popular=["area rug"],
                     history=10, decay=0.5, leaves=5)
    prompt = _prompt(("search", "grey sofa"), ("search", "grey oak sofa"))
    [lst] = rule.recommend([prompt], k=6)
    # share(Sofas) = 1, grey 1, oak 1: sofa 0.5 = leather sofa 0.5·1, grey sofa 0.3, oak sofa 0.3, grey oak sofa 0.2
    assert lst[:4] == ["leather sofa", "sofa", "grey sofa", "oak sofa"]  # ties: by text
    assert "grey oak sofa" in lst and lst[-1] == "area rug"  # never-searched concepts and popularity fill
    assert len(lst) == 6


def test_coclick_backoff_never_outranks_exact_evidence(und):
    co = CoClick(table={"grey sofa": [("blue rug", 0.9)]}, popular=["area rug"], history=5, decay=0.8)
    rule = FacetRule(und, {}, k_prior=[0.5, 0.3, 0.2], popular=["area rug"], history=10, decay=0.8, leaves=5,
                     transitions={"Sofas": {"Coffee Tables": 1.0}})
    [lst] = CoClickBackoff(co, rule).recommend([_prompt(("search", "grey sofa"))], k=4)
    assert lst[0] == "blue rug"  # exact co-click first
    assert lst[1:3] == ["coffee table", "grey coffee table"]  # backed off to the next leaf, user's colour kept
    assert lst[3] == "area rug"


def test_strong_arms_are_registered():
    from aigq.evaluation.recommend import ARMS

    assert {"facet-rule", "co-click+backoff", "ebr-all"} <= set(ARMS)
    assert build_config({}).eval.rule_leaves >= 1
