"""The ``glmed`` command: one entry point whose subcommands live beside the code they drive.

Each subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int`` and keeps
its heavy imports inside ``run``, so ``glmed --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "demo": ("glmed.cli.demo", "segment a generated ultra-high-resolution image with a small GLNet"),
    "predict": ("glmed.cli.predict", "segment an image or a whole slide with a trained network"),
    "score": ("glmed.cli.score", "score an ISIC 2018 Task 1 submission folder against ground truth"),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="glmed",
        description="Segment ultra-high-resolution medical images with GLNet, and score ISIC submissions.",
        epilog="Run 'glmed COMMAND --help' for a command's options.",
    )
    from glmed import __version__

    parser.add_argument("--version", action="version", version=f"glmed {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``glmed`` command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return int(args._run(args))


if __name__ == "__main__":
    sys.exit(main())
