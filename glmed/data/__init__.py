"""MONAI dictionary transforms, dataset layouts, the global-local patch sampler and synthetic data."""
