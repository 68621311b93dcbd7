"""What the benchmark scripts' tests share: loading a script from benchmarks/ and reading its printed tables."""

import importlib.util
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` as a module (the scripts are not a package: loaded from their path)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def markdown_table(text: str, first_column: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table in ``text`` whose header starts with ``first_column``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} "))
    table = []
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    assert set("".join(table[1]).split("---")) <= {""}  # the Markdown rule under the header
    return [dict(zip(table[0], row)) for row in table[2:]]
