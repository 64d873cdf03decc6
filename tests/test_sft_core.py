"""IL-SFT pure logic: Eq. 1 (mean-of-subword init), Eq. 5 (target-token NLL), batching, Think format + teacher,
sample checks and the deterministic batch order. No Ray."""

import math

import numpy as np
import polars as pl
import pytest
import torch
from tiny_policy import SCFG, build_policy, samples_frame, write_samples

from aigq.config import SFTConfig
from aigq.data import prompt as P
from aigq.models.factory import ModelNotFoundError, load_policy
from aigq.models.special_tokens import mean_subword_init, subword_text
from learner import data as D
from learner.sft import IGNORE, Example, TargetLM, collate, target_nll
from learner.teacher import load_teacher, template_teacher


def test_eq1_mean_subword_init_hand_worked():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [9.0, 9.0], [9.0, 9.0]])
    mean_subword_init(w, [3, 4], [[0, 1], [0, 1, 2]])
    assert w[3].tolist() == [2.0, 3.0]  # mean([1,2],[3,4])
    assert w[4].tolist() == [3.0, 4.0]  # mean([1,2],[3,4],[5,6])
    assert w[:3].tolist() == [[1, 2], [3, 4], [5, 6]]  # old rows untouched
    assert subword_text("<1_day_ago>") == "1 day ago" and subword_text("</think>") == "think"
    with pytest.raises(ValueError):
        mean_subword_init(w, [3], [[]])


def test_eq1_applied_to_input_and_untied_output_rows(tmp_path):
    from tiny_policy import TINY

    from aigq.models.special_tokens import add_special_tokens
    from aigq.models.tiny import build_tiny, corpus, train_tokenizer

    samples = write_samples(tmp_path / "s")
    tok = train_tokenizer(corpus(samples, 200), 400)
    model = build_tiny(TINY, tok)
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    pieces = tok.encode("1 day ago", add_special_tokens=False)
    assert len(pieces) >= 2
    added = add_special_tokens(model, tok, ["<1_day_ago>", "<search>"])
    assert added == ["<1_day_ago>", "<search>"]
    new_id = tok.convert_tokens_to_ids("<1_day_ago>")
    assert tok.encode("x <1_day_ago> y", add_special_tokens=False).count(new_id) == 1  # one token now
    assert torch.allclose(model.get_input_embeddings().weight[new_id], before_in[pieces].mean(0))
    assert torch.allclose(model.get_output_embeddings().weight[new_id], before_out[pieces].mean(0))
    assert torch.equal(model.get_input_embeddings().weight[: len(before_in)], before_in)
    assert "<1_day_ago>" in tok.decode([new_id], skip_special_tokens=True)  # stays visible in outputs
    assert add_special_tokens(model, tok, ["<search>"]) == []  # idempotent


def test_eq5_target_nll_hand_worked():
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0], [5.0, 5.0, 5.0]])
    labels = torch.tensor([1, 0, IGNORE])
    nll, n = target_nll(logits, labels)
    # -log(1/3) - log(2/4); the prompt position (IGNORE) contributes nothing
    assert n.item() == 2 and nll.item() == pytest.approx(math.log(3) + math.log(2), abs=1e-6)


def test_collate_puts_labels_on_target_tokens_only():
    b = collate([Example((10, 11, 12, 13, 2), 2), Example((20, 21, 2), 1)], pad_id=0)
    assert b["input_ids"].tolist() == [[10, 11, 12, 13, 2], [20, 21, 2, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    # position t predicts token t+1: targets 12, 13, eos for the first; 21, eos for the second
    assert b["labels"].tolist() == [[IGNORE, 12, 13, 2, IGNORE], [21, 2, IGNORE, IGNORE, IGNORE]]


def test_target_lm_equals_full_logits_loss(tmp_path):
    policy = build_policy(tmp_path / "p", write_samples(tmp_path / "s"))
    model, tok = load_policy(policy)
    b = collate([Example(tuple(range(5, 30)), 10), Example(tuple(range(40, 52)), 4)], tok.pad_token_id)
    nll, n = TargetLM(model)(**b)
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b["labels"].reshape(-1),
                                            ignore_index=IGNORE, reduction="sum")
    assert n.item() == (25 - 10) + (12 - 4)
    assert nll.item() == pytest.approx(ref.item(), rel=1e-5)


def test_think_targets_round_trip_and_teacher_sees_only_the_prompt():
    df = samples_frame(12)
    texts = D.target_texts(df, "think", True, template_teacher)
    for text, target, prompt in zip(texts, df["target"].to_list(), df["prompt"].to_list(), strict=True):
        assert text.startswith(P.THINK_OPEN)
        assert P.parse_output(text, "think") == target  # concatenated Q_k = the ordered label list
        for i, (_, btype, content) in P.parse_behaviours(prompt).items():
            if f"#{i} " in text:
                assert f"#{i} {btype} {content}" in text
    plain = D.target_texts(df, "think", False, None)
    assert all(P.THINK_OPEN not in t for t in plain)
    assert D.target_texts(df, "direct", False, None)[0] == P.format_target(df["target"][0])
    assert P.interest_groups(["a", "b", "c"], [[1], [1], []]) == [((1,), ["a", "b"]), ((), ["c"])]
    assert P.parse_think_target("<think> unfinished") == ("unfinished", [])
    assert load_teacher("template") is template_teacher
    with pytest.raises(ValueError, match="sft.teacher"):
        load_teacher("no_such_module:fn")


def test_tokenize_drops_oldest_behaviours_to_fit(tmp_path):
    policy = build_policy(tmp_path / "p", write_samples(tmp_path / "s"))
    _, tok = load_policy(policy)
    prompt = P.format_prompt({}, [(0, "search", "oak lamp"), (1, "click", "blue sofa"), (2, "search", "rug")], SCFG)
    full, _ = D.tokenize(tok, [prompt], ["lamp ; sofa"], 512)
    limit = len(full[0].ids) - 2
    (ex,), truncated = D.tokenize(tok, [prompt], ["lamp ; sofa"], limit)
    assert truncated == 1 and len(ex.ids) <= limit
    kept = tok.decode(ex.ids[: ex.n_prompt])
    assert "oak lamp" in kept and "rug" not in kept  # the most recent behaviour stays, the oldest goes
    with pytest.raises(ValueError, match="max_seq_len"):
        D.tokenize(tok, [prompt], ["lamp ; sofa ; rug ; desk"], 8)


def test_batch_order_is_a_function_of_seed_and_step():
    n, b = 10, 4
    steps = [D.batch_indices(n, s, b, seed=3) for s in range(5)]  # 20 samples = 2 epochs
    assert all(len(x) == b for x in steps)
    stream = np.concatenate(steps)
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert np.array_equal(D.batch_indices(n, 3, b, seed=3), steps[3])
    assert not np.array_equal(D.batch_indices(n, 0, b, seed=4), steps[0])
    assert D.total_steps(10, 2.0, 4, None) == 5 and D.total_steps(10, 2.0, 4, 2) == 2


def test_sample_schema_and_config_checks(tmp_path):
    samples = write_samples(tmp_path / "s")
    df = D.read_samples(samples / "direct.parquet")
    train, held = D.split_eval(df, 2)
    assert held["day"].min() > train["day"].max()
    bad = tmp_path / "bad.parquet"
    df.with_columns(pl.col("target").list.join(" ; ")).drop("triggers").write_parquet(bad)
    with pytest.raises(D.SampleSchemaError) as err:
        D.read_samples(bad)
    assert "missing column 'triggers'" in str(err.value) and "column 'target' is String" in str(err.value)
    with pytest.raises(D.SampleSchemaError, match="no such sample file"):
        D.read_samples(tmp_path / "nope.parquet")
    D.check_samples_config(samples, SCFG)
    with pytest.raises(D.SampleSchemaError, match="samples.compress"):
        D.check_samples_config(samples, SCFG.model_copy(update={"compress": False}))
    with pytest.raises(D.SampleSchemaError, match="eval_days"):
        D.split_eval(df, 99)


def test_full_lists_keeps_only_long_enough_labels():
    df = pl.DataFrame({"sample_id": ["a", "b", "c"], "target": [["x"] * 10, ["x"] * 9, ["x"] * 12]})
    assert D.full_lists(df, None).height == 3
    assert D.full_lists(df, 10)["sample_id"].to_list() == ["a", "c"]
    with pytest.raises(D.SampleSchemaError, match="longest 12"):
        D.full_lists(df, 13)
    from actors.sft import _full_lists
    from aigq.config import AIGQConfig

    cfg = AIGQConfig().model_copy(update={"sft": SFTConfig(min_label_queries=10)})
    assert _full_lists(cfg, df).height == 2  # Direct: full lists only
    think = cfg.model_copy(update={"sft": SFTConfig(min_label_queries=10, variant="think")})
    assert _full_lists(think, df).height == 3  # Think lists vary in length by design


def test_every_policy_vocabulary_gets_the_slot_markers():
    from aigq.config import AIGQConfig
    from aigq.models.factory import policy_tokens

    direct = AIGQConfig()
    think = direct.model_copy(update={"sft": SFTConfig(variant="think")})
    plain = direct.model_copy(update={"samples": direct.samples.model_copy(update={"compress": False})})
    marks = P.slot_tokens(direct.samples.label_cap)
    assert marks == [f"<q{j}>" for j in range(1, 11)]
    assert set(marks) <= set(policy_tokens(direct)) and P.THINK_OPEN not in policy_tokens(direct)
    assert set(marks) | {P.THINK_OPEN, P.THINK_CLOSE} <= set(policy_tokens(think))
    assert policy_tokens(plain) == marks  # no prompt compression: only the output format's tokens


def test_missing_or_incomplete_model_folder_fails_fast(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_policy(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_policy(tmp_path / "empty")


def test_sft_config_defaults_follow_the_paper():
    c = SFTConfig()
    assert c.epochs == 2 and c.lr == 2e-3 and c.sample_temperature == 1.0 and c.sample_top_k == 100


def test_parse_stats_counts_exact_and_at_least():
    from aigq.models.generate import full_list, parse_stats

    texts = ["a ; b ; c", "a ; b", "a ; b ; c ; d", "a ;  ; b ; c", "x ; x ; y"]
    s = parse_stats(texts, 3)
    assert s["parse_rate"] == pytest.approx(2 / 5)  # exactly 3 pieces, all non-empty (an empty slot fails)
    assert s["at_least_rate"] == pytest.approx(4 / 5)
    assert s["duplicate_share"] == pytest.approx(1 / 5)
    think = ["<think> r </think>\n1 => a ; b", "<think> never closed", "- => a"]
    assert parse_stats(think, 3, "think")["parse_rate"] == pytest.approx(2 / 3)
    assert full_list("<q1> a ; <q2> b ; <q3> c ;", 3) and not full_list("<q1> a ; <q2> ; <q3> c ;", 3)
