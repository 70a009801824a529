"""Result files of ``sew bench``, ``sew sweep`` and the demo: markdown + CSV tables, PNG plots.

Plots are labelled scatter plots (matplotlib's Agg backend: no display needed), so every figure of
this project reads the same way.
"""

import csv
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, List, Tuple

Point = Tuple[str, str, float, float]  # (series, label, x, y)


def scatter_png(points: Iterable[Point], path: Path, xlabel: str, ylabel: str, title: str = "") -> None:
    """One colour per series; every point annotated with its label; axes start at zero."""
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq's root logger may be at DEBUG
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = list(points)
    if not points:
        raise ValueError(f"nothing to plot in {path}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for series in dict.fromkeys(p[0] for p in points):  # first-seen order
        mine = [p for p in points if p[0] == series]
        ax.scatter([p[2] for p in mine], [p[3] for p in mine], label=series)
        for _, label, x, y in mine:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1.2 * max(p[2] for p in points) or 1)  # room for the labels
    ax.set_ylim(0, 1.15 * max(p[3] for p in points) or 1)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_tables(out: Path, stem: str, preamble: str, markdown: str, rows: List) -> None:
    """``out/<stem>.md`` (preamble, blank line, table) and ``out/<stem>.csv`` (one line per dataclass row)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(f"{preamble}\n\n{markdown}")
    with open(out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
