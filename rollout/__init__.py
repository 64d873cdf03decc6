"""Rollout: generation engines (vLLM, transformers) behind one interface and the weight-sync route."""
