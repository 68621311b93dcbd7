"""Training: stages as data, the trainer's step, the one epoch loop (``fit``), the staged runner,
validation and multi-process training."""
