"""The pipeline layer: every stage as a plain function that takes the resolved config, a tracker and a ``say``,
does its work (on Ray where it needs actors), logs to MLflow and returns what it measured. The CLI, the demo, the
Table-1 suite and the daily loop call these; nothing here prints tables or exits the process.

- ``aigq.pipeline.data``: simulate / import a log → validate → build samples (re-exported here);
- ``aigq.pipeline.train``: IL-SFT and IL-GRPO on the actor system (``actors``);
- ``aigq.pipeline.ctr``: the daily CTR reward model;
- ``aigq.pipeline.serving``: the Think index, ``serve up`` and the Serve apps' context;
- ``aigq.pipeline.suite``: Table 1's policy variants, trained when missing.
"""

from aigq.pipeline.data import (
    NotOurFolderError,
    build_samples,
    import_log,
    samples_stats,
    simulate,
    validate,
    world_stats,
)

__all__ = ["NotOurFolderError", "build_samples", "import_log", "samples_stats", "simulate", "validate", "world_stats"]
