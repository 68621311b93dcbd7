"""Inference: the global-local inferer (plain and coarse-to-fine), patch merging, whole slides."""
