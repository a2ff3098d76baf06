"""Meta-learning: how a policy initialisation is learned (MAML-TRPO, multi-task pretraining) and judged."""
