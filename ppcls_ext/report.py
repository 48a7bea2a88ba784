"""Markdown tables, and printing a report that may also go to a file: what the zoo table and the
benchmarks share."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

_RULES = {"l": "---", "r": "---:", "c": ":---:"}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str) -> str:
    """A markdown table; `align` has one letter per column: l(eft), r(ight) or c(entre)."""
    if len(align) != len(header) or set(align) - set(_RULES):
        raise ValueError(f"align needs one of l/r/c per column ({len(header)}), got {align!r}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(_RULES[a] for a in align) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


def publish(text: str, path: Optional[str] = None) -> None:
    """Print `text` and, given a path, also write it there."""
    print(text, flush=True)
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
