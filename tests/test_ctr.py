"""The CTR reward model on a small simulated world: beats popularity, ranks like the hidden model, round-trips
through safetensors + JSON, warm-starts from the previous day (Eq. 15), scores any text."""

import ast
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from aigq.config import CTRConfig, SamplesConfig, WorldConfig
from aigq.data.prompt import format_prompt
from aigq.data.simulate import simulate_world
from aigq.data.validate import validate_world
from aigq.evaluation.ctr_oracle import oracle_spearman
from aigq.rewards.context import UserContext
from aigq.rewards.ctr import CTRScorer, Featurizer, load_categories, load_model
from aigq.rewards.ctr_categories import CategoryIndex, match_features
from aigq.rewards.ctr_train import auc, click_data, log_loss, rankdata, spearman, train_day

CFG = CTRConfig(hash_buckets=1 << 15, epochs_cold=3, epochs_warm=2, eval_days=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctr")
    world = root / "world"
    simulate_world(WorldConfig(users=500, days=12), seed=7, out=world)
    v = validate_world(world, write_quarantine=False)
    res = train_day(v.tables, v.meta["start_date"], 12, 10, CFG, root / "models")
    return world, v, res, root / "models"


def test_metric_helpers_hand_worked():
    assert rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert np.isnan(auc([1, 1], [0.1, 0.2]))
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))
    assert spearman([1, 2, 3, 4], [10, 20, 30, 25]) == pytest.approx(0.8)


def test_held_out_auc_beats_popularity_and_ranks_like_the_hidden_model(trained):
    world, v, res, _ = trained
    m = res.metrics
    assert res.train_days == list(range(1, 11)) and res.eval_days == [11, 12] and res.warm_start is None
    assert m["eval.impressions"] > 300
    print(f"\nsmall world: AUC {m['eval.auc']:.3f} vs popularity {m['eval.popularity_auc']:.3f}, "
          f"log-loss {m['eval.logloss']:.3f} (base rate {m['eval.logloss_base_rate']:.3f})")
    # measured: AUC 0.743 vs popularity 0.479; a model blind to the user context reaches only 0.573
    assert m["eval.auc"] >= m["eval.popularity_auc"] + 0.15
    assert m["eval.logloss"] < m["eval.logloss_base_rate"]
    # the lift comes from the user's context: the same model scoring each held-out impression with another user's
    # context, or with none, loses it (measured 0.743 → 0.569 shuffled, 0.570 empty; a context-blind model: lift 0)
    scorer = CTRScorer.load(res.folder)
    held = click_data(v.tables, v.meta["start_date"], res.eval_days, scorer.cfg)
    y, qs, ctx = held.imp["clicked"].to_numpy(), held.imp["query"].to_list(), held.imp["ctx"].to_numpy()
    own = auc(y, scorer.score(held.contexts, ctx, qs))
    assert own == pytest.approx(m["eval.auc"])
    perm = np.random.default_rng(0).permutation(len(held.contexts))
    shuffled = auc(y, scorer.score([held.contexts[i] for i in perm], ctx, qs))
    empty = auc(y, scorer.score([UserContext()], np.zeros(len(qs), np.int64), qs))
    print(f"small world: AUC with the user's context {own:.3f}, another user's {shuffled:.3f}, none {empty:.3f}")
    assert own >= max(shuffled, empty) + 0.08
    # position bias is learned, not baked into relevance: lower slots are examined less
    assert 1.0 == m["model.examination_slot0"] > m["model.examination_slot1"] > m["model.examination_slot2"]
    o = oracle_spearman(world, v.tables, v.meta["start_date"], res.eval_days, scorer, scorer.cfg)
    print(f"small world: Spearman vs hidden model {o['oracle.spearman']:.3f} over {o['oracle.pairs']} pairs")
    # 500 users / 10 train days (measured 0.23); the 1000-user / 30-day figure is measured by `aigq train-ctr`.
    # An untrained or popularity-like model scores ≈ 0 or below here.
    assert o["oracle.spearman"] > 0.15


def test_safetensors_json_round_trip_and_no_pickle(trained):
    _, v, res, _ = trained
    files = sorted(p.name for p in res.folder.iterdir())
    assert files == ["categories.parquet", "category_parents.parquet", "model.json", "model.safetensors"]
    model, cfg, meta = load_model(res.folder)
    assert cfg == CFG.model_copy(update={"objective": "clicks"})  # auto resolved: the world has HintQ exposures
    assert meta["day"] == 10 and meta["metrics"]["eval.auc"] == pytest.approx(res.metrics["eval.auc"])
    assert meta["objective"] == "clicks" and res.objective == "clicks" and "negatives" not in meta
    assert model.categories
    with pytest.raises(ValueError, match="category features"):
        CTRScorer(model, cfg)  # the lookup travels with the model; scoring without it would silently differ
    scorer = CTRScorer(model, cfg, load_categories(res.folder, model, cfg))
    qs = ["velvet sofa", "desk lamp", "a query never seen in any log 42"]

    ctx = UserContext({"gender": "Female", "age": "30"}, [(0, "search", "velvet sofa"), (1, "click", "blue chair")])
    again = CTRScorer.load(res.folder).score_one(ctx, qs)
    assert np.array_equal(scorer.score_one(ctx, qs), again)


def test_scores_any_text_and_prompt_context_equals_structured_context(trained):
    _, _, res, _ = trained
    scorer = CTRScorer.load(res.folder)
    from aigq.rewards.context import context_from_prompt

    ctx = UserContext({"gender": "Male", "age": "25", "city": "Hangzhou"},
                      [(0, "search", "outdoor lawn games"), (2, "click", "oak dining table by Latitude")])
    garbage = ["", "x" * 10_000, b"\xff\xfe".decode("utf-8", "replace"), "红色连衣裙", "lawn games for kids"]
    p = scorer.score_one(ctx, garbage)
    assert p.shape == (5,) and np.all(np.isfinite(p)) and np.all((p > 0) & (p < 1))
    prompt = format_prompt(ctx.profile, ctx.behaviours, SamplesConfig())
    assert np.allclose(scorer.score_one(context_from_prompt(prompt), garbage), p)
    # the user's behaviours matter: the same query scores differently for a user with other behaviours
    other = UserContext({"gender": "Male", "age": "25"}, [(0, "search", "bathroom vanity"), (1, "search", "towels")])
    assert scorer.score_one(ctx, ["lawn games"])[0] != scorer.score_one(other, ["lawn games"])[0]


def test_warm_start_from_previous_day_eq15(trained):
    world, v, res10, models = trained
    before = load_model(res10.folder)[0].state_dict()
    res11 = train_day(v.tables, v.meta["start_date"], 12, 11, CFG, models)
    assert res11.warm_start == res10.folder and res11.train_days == [11] and res11.eval_days == [12]
    assert res11.metrics["train.warm_start"] == 1.0
    after = load_model(res11.folder)[0].state_dict()
    # continued from φ_10 (small steps on one day), not re-initialised
    diff = (after["head.0.weight"] - before["head.0.weight"]).norm() / before["head.0.weight"].norm()
    assert 0 < float(diff) < 0.5
    cold = train_day(v.tables, v.meta["start_date"], 12, 11, CFG.model_copy(update={"epochs_cold": 1}),
                     models.parent / "cold", cold=True)
    assert cold.warm_start is None and cold.train_days == list(range(1, 12))
    with pytest.raises(ValueError, match="outside"):
        train_day(v.tables, v.meta["start_date"], 12, 13, CFG, models)
    assert torch.equal(load_model(res10.folder)[0].state_dict()["exam"], before["exam"])  # day 10 untouched


# Modules outside aigq/evaluation/ (the evaluators: the simulated A/B and the test-only ctr_oracle) that may reach
# the simulator's hidden model, each with its reason. Everything else — aigq/ (samples, the CTR model, rewards, the
# stages, the CLI) and the actor system's packages (actors/, learner/, rollout/, serve_app/) — must not.
HIDDEN_ALLOWED = {
    "aigq/data/hidden.py": "the hidden model itself: world/hidden's paths and reader",
    "aigq/data/simulate.py": "the simulator writes world/hidden (click model, interests) beside the public logs",
    "aigq/data/world_v2.py": "world v2's simulator: writes world/hidden (taste, v2.json) and clicks with the shared model",
    "aigq/loop/days.py": "the daily loop's simulated day T+1: the hidden click model clicks what the deployed HintQ shows",
    "aigq/loop/runner.py": "builds that day simulation's HiddenModel; each day's training reads only copied public tables",
    "aigq/pipeline/ctr.py": "`aigq train-ctr --oracle`: after training, runs the test-only ctr_oracle when world/hidden exists",
}
SCANNED = ("aigq", "actors", "learner", "rollout", "serve_app")
HIDDEN_MODULES = ("aigq.data.hidden", "aigq.evaluation.ctr_oracle")
HIDDEN_FILES = {"hidden", "click_model.json"}  # world/hidden/..., read directly as a path


def _hidden_uses(path: Path, root: Path) -> list[str]:
    """In one source file under ``root`` (the repository): imports of the hidden model or the oracle (absolute or
    relative; the module or a name from it) and path joins onto world/hidden (``x / "hidden"``, ``joinpath``)."""
    package = list(path.relative_to(root).parent.parts)
    uses = []
    for node in ast.walk(ast.parse(path.read_text())):
        found: set[str] = set()
        if isinstance(node, ast.Import | ast.ImportFrom):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = package[: len(package) - node.level + 1] if node.level else []
                mod = ".".join([*base, *([node.module] if node.module else [])])
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            found = {t for t in targets if any(t == m or t.startswith(m + ".") for m in HIDDEN_MODULES)
                     or "hidden" in t.rsplit(".", 1)[-1].lower()}
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            found = {f"path / {c.value!r}" for c in (node.left, node.right)
                     if isinstance(c, ast.Constant) and c.value in HIDDEN_FILES}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("joinpath", "join"):
            found = {f"path join {c.value!r}" for c in node.args if isinstance(c, ast.Constant) and c.value in HIDDEN_FILES}
        uses += [f"{path.relative_to(root).as_posix()}:{node.lineno}: {t}" for t in sorted(found)]
    return uses


def test_nothing_that_trains_or_scores_reads_the_hidden_model():
    """Only the evaluators (aigq/evaluation/) and the simulator's own modules (HIDDEN_ALLOWED) may import
    aigq.data.hidden / aigq.evaluation.ctr_oracle or join a path onto world/hidden."""
    root = Path(__file__).resolve().parents[1]
    files = sorted(f for top in SCANNED for f in (root / top).rglob("*.py")
                   if f.relative_to(root).parts[:2] != ("aigq", "evaluation"))
    scanned = {f.relative_to(root).as_posix() for f in files}
    assert {"aigq/rewards/ctr.py", "actors/reward.py", "learner/grpo.py", "serve_app/hintq.py", "aigq/cli/data.py",
            "aigq/data/samples.py", "rollout/engine.py"} <= scanned  # every package is scanned, not a few folders
    uses = {f.relative_to(root).as_posix(): _hidden_uses(f, root) for f in files}
    offenders = [u for name, found in uses.items() if name not in HIDDEN_ALLOWED for u in found]
    assert offenders == []
    # the allow-list stays honest: each entry exists and still needs its exemption
    assert [name for name in HIDDEN_ALLOWED if not uses.get(name)] == []


def test_hidden_model_guard_sees_every_way_in(tmp_path):
    """The scanner itself: each way of reaching the hidden model is found; the CTR model's "hidden" width is not."""
    folder = tmp_path / "aigq" / "learner"
    folder.mkdir(parents=True)
    cases = {
        "import aigq.data.hidden": True,
        "from aigq.data.hidden import HiddenModel": True,
        "from aigq.data import hidden": True,
        "from ..data.hidden import click_probability": True,
        "from ..evaluation.ctr_oracle import oracle_spearman": True,
        "from aigq.evaluation import ctr_oracle": True,
        "p = world / 'hidden' / 'interests'": True,
        "p = Path(world).joinpath('hidden')": True,
        "arch = {'hidden': 64}\nfrom aigq.data.schema import day_expr\nfrom . import grpo": False,
    }
    for code, flagged in cases.items():
        (folder / "m.py").write_text(code + "\n")
        assert bool(_hidden_uses(folder / "m.py", tmp_path)) == flagged, code


def test_category_match_features_hand_worked():
    """Query leaves [Sofas, Desks, unknown]; one context with behaviours [Sofas, Chairs (Sofas' sibling), unknown]."""
    q_leaf, q_par = np.array([0, 1, -1]), np.array([0, 1, -1])
    h_leaf, h_par = np.array([[0, 2, -1]]), np.array([[0, 0, -1]])
    f = match_features(q_leaf, q_par, h_leaf, h_par, np.zeros(3, np.int64))
    assert f[..., 0].tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]  # same leaf; unknown never matches unknown
    assert f[..., 1].tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 0]]  # same parent, other leaf


def test_category_index_from_public_tables_and_featuriser(trained):
    _, v, res, _ = trained
    idx = CategoryIndex.from_tables(v.tables, 0.5)
    q = v.tables["queries"].head(1)
    item = v.tables["items"].filter(pl.col("category") == q["category"][0]).row(0, named=True)
    leaf, par = idx.ids([q["query"][0], item["description"], "zzzz qqqq", None])
    assert leaf[0] == leaf[1] >= 0 and par[0] == par[1] >= 0  # a query and an item of one leaf
    assert leaf[2] == leaf[3] == par[2] == par[3] == -1
    parent = item["category_path"].split(">")[-2].strip()
    assert idx.parents.filter(pl.col("category") == item["category"])["parent"].to_list() == [parent]
    # the featuriser flags the behaviours of the query's leaf; the saved lookup reproduces the same flags
    ctx = UserContext({}, [(0, "click", item["description"]), (1, "search", "zzzz qqqq")])
    b = Featurizer(CFG, idx).batch([ctx], [0, 0], [q["query"][0], "zzzz"])
    assert b.cat[0, :2, 0].tolist() == [1.0, 0.0] and b.cat[1].sum() == 0
    model, cfg, _ = load_model(res.folder)
    b2 = Featurizer(cfg, load_categories(res.folder, model, cfg)).batch([ctx], [0, 0], [q["query"][0], "zzzz"])
    assert torch.equal(b.cat, b2.cat)


def test_text_only_model_has_no_category_files(trained, tmp_path):
    _, v, _, _ = trained
    cfg = CFG.model_copy(update={"category_features": False, "epochs_cold": 1, "pretrain_epochs": 0})
    res = train_day(v.tables, v.meta["start_date"], 12, 10, cfg, tmp_path)
    assert sorted(p.name for p in res.folder.iterdir()) == ["model.json", "model.safetensors"]
    assert not load_model(res.folder)[0].categories
    assert CTRScorer.load(res.folder).score_one(UserContext(), ["velvet sofa"]).shape == (1,)
