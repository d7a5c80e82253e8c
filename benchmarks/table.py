"""The one table format every benchmark prints: figure beside its same-run baseline and the ratio."""

from __future__ import annotations

HEADER = "| measured | figure | baseline (same run) | ratio |\n|---|---|---|---|"


def print_table(rows: list[str]) -> None:
    print(HEADER)
    print("\n".join(rows))
