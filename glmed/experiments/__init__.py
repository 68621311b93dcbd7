"""The recipe framework: validated run configuration, the staged run with its files, and the
submission writers the ``recipes/`` scripts call."""
