"""Training and inference: the global-local inferer, staged training, checkpoints."""
