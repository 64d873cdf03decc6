"""Evaluators. ``ctr_oracle`` is test-only: it reads the simulator's hidden click model and nothing trains on it."""
