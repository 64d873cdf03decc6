"""IL-GRPO rewards (paper §3.5): the CTR reward model (Eqs. 14–15), rule rewards (Eqs. 10, 16) and their composition.

Pure logic: nothing here imports Ray or reads the simulator's hidden model. ``actors.reward`` runs the
composition on a pool of Ray actors; ``aigq.evaluation.ctr_oracle`` is the test-only check against the hidden model.
"""
