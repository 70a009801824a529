"""The demo's result table (markdown) and plot (PNG: WER against forward time per second of audio).

One row per model, or per operating point of a model with several (St-SEW's points, the exit
thresholds of SEW-D with early exit), from ``sew infer``'s ``summary-*.json`` files and ``sew
sweep``'s ``sweep.csv`` files; ``--seeds`` adds the spread of the headline comparison over seeds.
"""

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

COLUMNS = ["model", "operating point", "parameters", "forward ms per s of audio", "WER greedy", "WER with LM",
           "LM weight, word score", "letter error greedy"]


@dataclass
class Row:
    model: str
    setting: str  # the point's name in the table ("(2,2,1)", "entropy < 0.3: ..."); "" for a model's only point
    parameters: int
    forward_ms_per_s: float  # greedy decoding's forward time (the LM changes only the search after it)
    wer_greedy: float
    wer_lm: float
    uer_greedy: float
    mark: str = ""  # the point's label on the plot, when ``setting`` is too long for it
    lm_weights: str = ""  # the LM decoding's "LM weight, word score" (chosen on validation)

    def cells(self) -> List[str]:
        return [self.model, self.setting or "-", f"{self.parameters / 1e6:.2f}M", f"{self.forward_ms_per_s:.1f}",
                f"{100 * self.wer_greedy:.1f}%", f"{100 * self.wer_lm:.1f}%", self.lm_weights or "-",
                f"{100 * self.uer_greedy:.1f}%"]


def lm_weights(tuned: dict) -> str:
    """The cell of ``sew tune-lm``'s ``best.json``: "LM weight, word score"."""
    return f"{tuned['lm_weight']:g}, {tuned['word_score']:g}"


def summary_row(model: str, greedy: dict, lm: dict, weights: str = "") -> Row:
    """A model's row from its two ``sew infer`` summaries (greedy and LM decoding at ``weights``)."""
    return Row(model, "", greedy["parameters"], 1000 * greedy["rtf_forward"], greedy["wer"], lm["wer"], greedy["uer"],
               lm_weights=weights)


def read_sweep(path: Path) -> List[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def sweep_rows(model: str, greedy: List[dict], lm: List[dict], label=lambda p: p["point"],
               mark=lambda p: "", weights: str = "") -> List[Row]:
    """One row per point of two ``sew sweep`` runs over the same points (greedy and LM decoding at
    ``weights``).

    ``label(p)`` names a point in the table, ``mark(p)`` on the plot: the sweep's CSV row -> text.
    """
    if [p["point"] for p in greedy] != [p["point"] for p in lm]:
        raise ValueError(f"{model}: the greedy and LM sweeps cover different points")
    return [Row(model, label(g), int(g["parameters"]), float(g["forward_ms_per_s"]), float(g["wer"]),
                float(with_lm["wer"]), float(g["uer"]), mark(g), weights) for g, with_lm in zip(greedy, lm)]


def markdown(rows: List[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot(rows: List[Row], path: Path, lm: str) -> None:
    from sew_plugin.inference.reports import scatter_png

    points = [(f"{r.model}, greedy", r.mark or r.setting, r.forward_ms_per_s, 100 * r.wer_greedy) for r in rows]
    points += [(f"{r.model}, LM", r.mark or r.setting, r.forward_ms_per_s, 100 * r.wer_lm) for r in rows]
    scatter_png(points, path, "forward time per second of audio (ms)", "test WER (%)",
                f"demo: held-out sentences, greedy and lexicon + {lm} LM decoding")


def write_report(rows: List[Row], test_set: str, lm: str, md_path: Path, png_path: Path) -> str:
    """``lm`` names the LM in the plot's title (e.g. "3-gram")."""
    text = f"Held-out test set: {test_set}.\n\n{markdown(rows)}"
    Path(md_path).write_text(text)
    plot(rows, Path(png_path), lm)
    return text


def spread_markdown(by_seed: Dict[int, List[Row]], first: str, second: str) -> str:
    """The headline comparison per seed (model ``first`` against ``second``: each one's own row, not
    its operating points), then the spread of each one's WER with the LM."""
    head = (f"| seed | {first}: WER greedy | with LM | forward ms per s | {second}: WER greedy | with LM | "
            "forward ms per s |\n|---|---|---|---|---|---|---|\n")
    lines, ahead, lm_wers = [], 0, {first: [], second: []}
    for seed, rows in by_seed.items():
        a, b = (next(r for r in rows if r.model == name and not r.setting) for name in (first, second))
        lines.append(f"| {seed} | {100 * a.wer_greedy:.1f}% | {100 * a.wer_lm:.1f}% | {a.forward_ms_per_s:.1f} | "
                     f"{100 * b.wer_greedy:.1f}% | {100 * b.wer_lm:.1f}% | {b.forward_ms_per_s:.1f} |\n")
        ahead += a.wer_greedy <= b.wer_greedy and a.wer_lm <= b.wer_lm and a.forward_ms_per_s < b.forward_ms_per_s
        lm_wers[first].append(100 * a.wer_lm)
        lm_wers[second].append(100 * b.wer_lm)
    spreads = "".join(f"{name}: WER with LM {min(w):.1f}-{max(w):.1f}% (spread {max(w) - min(w):.1f} points).\n"
                      for name, w in lm_wers.items())
    return (head + "".join(lines) + f"\n{spreads}{first} is no worse than {second} greedy and with the LM, "
            f"at a lower forward time, for {ahead} of {len(by_seed)} seeds.\n")
