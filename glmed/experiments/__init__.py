"""The recipe framework the ``recipes/`` scripts call.

It holds the validated run configuration, the staged run with its files, and the
submission writers.
"""
