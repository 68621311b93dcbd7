"""Training: stages as data, the trainer's step, the one epoch loop (``fit``) and the staged runner.

Also validation and multi-process training.
"""
