"""AIGQ: generative pre-search query recommendation (arXiv 2603.19710) on Ray, vLLM and MLflow."""

__version__ = "0.1.0"
