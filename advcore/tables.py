"""Result tables in the papers' formats (markdown and JSON) and LADDER's Avg. Rank.

A table is ``rows: dict[row_name, dict[column, float | None]]``; ``None`` is the
papers' "−" (e.g. a defence is not scored on the attack it was trained on).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from advcore import files

Table = Mapping[str, Mapping[str, Optional[float]]]


def column_ranks(table: Table, column: str) -> dict[str, float]:
    """Ranks the rows that have a value in ``column`` (1 = highest accuracy).

    Tied rows all get the best rank of the places they span ("competition"
    ranking: 99.36, 99.36, 99.04 rank 1, 1, 3). The LADDER paper leaves ties
    unspecified, but the LADDER paper's printed MNIST Avg. Ranks (LADDER
    3.29, cavRandom 5.00, Random 3.29) are reproduced only this way; mean
    ranks would give 3.43 and 5.07.
    """
    values = {row: cells[column] for row, cells in table.items()
              if cells.get(column) is not None}
    # 1 + the number of strictly better rows: ties share the best place.
    return {row: 1.0 + sum(other > value for other in values.values())
            for row, value in values.items()}


def avg_rank(table: Table, columns: Optional[Sequence[str]] = None) -> dict[str, float]:
    """LADDER's Avg. Rank (docs/ladder.md#avg-rank).

    For every column (Clean plus each attack) all rows, the vanilla model
    included, are ranked by accuracy; rows with "−" in a column are left out
    of that column. A row's Avg. Rank is the mean of its ranks over the
    columns where it has a value. Lower is better.
    """
    if columns is None:
        columns = []
        for cells in table.values():
            for c in cells:
                if c not in columns:
                    columns.append(c)
    per_row: dict[str, list[float]] = {row: [] for row in table}
    for column in columns:
        for row, rank in column_ranks(table, column).items():
            per_row[row].append(rank)
    return {
        row: (sum(r) / len(r) if r else float("nan")) for row, r in per_row.items()
    }


def _fmt(value: Optional[float], digits: int) -> str:
    if value is None:
        return "−"
    return f"{value:.{digits}f}"


def markdown_table(
    table: Table,
    columns: Optional[Sequence[str]] = None,
    row_header: str = "model",
    digits: int = 2,
    with_avg_rank: bool = False,
) -> str:
    """Renders ``table`` as a GitHub markdown table, optionally with Avg. Rank."""
    if columns is None:
        columns = []
        for cells in table.values():
            for c in cells:
                if c not in columns:
                    columns.append(c)
    ranks = avg_rank(table, columns) if with_avg_rank else {}
    header = [row_header, *columns] + (["Avg. Rank"] if with_avg_rank else [])
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row, cells in table.items():
        entries = [row] + [_fmt(cells.get(c), digits) for c in columns]
        if with_avg_rank:
            entries.append(_fmt(ranks[row], 2))
        lines.append("| " + " | ".join(entries) + " |")
    return "\n".join(lines)


def write_table(
    path_prefix: str,
    table: Table,
    columns: Optional[Sequence[str]] = None,
    title: str = "",
    with_avg_rank: bool = False,
    **markdown_kwargs,
) -> None:
    """Writes ``<prefix>.md`` and ``<prefix>.json`` for one table (atomically)."""
    md = markdown_table(table, columns, with_avg_rank=with_avg_rank, **markdown_kwargs)
    files.write_text(path_prefix + ".md", (f"## {title}\n\n" if title else "") + md + "\n")
    payload = {"title": title, "rows": {k: dict(v) for k, v in table.items()}}
    if with_avg_rank:
        payload["avg_rank"] = avg_rank(table, columns)
    files.write_json(path_prefix + ".json", payload)
