"""Ray actors: rollout workers, reward actors, the DDP learner group, and their supervised pools."""
