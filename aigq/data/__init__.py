"""Data layer (polars): log schema and validation, simulated world, importers, IL-SFT / Think samples.

Pure logic: imports nothing of ours but the config, and never Ray.
"""
