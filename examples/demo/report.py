"""The demo's result table (markdown) and plot (PNG: WER against forward time per second of audio)."""

from pathlib import Path

COLUMNS = ["model", "parameters", "forward ms per s of audio", "WER greedy", "WER with LM", "letter error greedy"]


def table_rows(summaries):
    """One row per model from ``sew infer``'s summary JSON files ({model: {"greedy": .., "lm": ..}})."""
    rows = []
    for model, by_decoder in summaries.items():
        greedy, lm = by_decoder["greedy"], by_decoder["lm"]
        rows.append([
            model,
            f"{greedy['parameters'] / 1e6:.2f}M",
            f"{1000 * greedy['rtf_forward']:.1f}",
            f"{100 * greedy['wer']:.1f}%",
            f"{100 * lm['wer']:.1f}%",
            f"{100 * greedy['uer']:.1f}%",
        ])
    return rows


def markdown(rows) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot(summaries, path: Path) -> None:
    from sew_plugin.inference.reports import scatter_png

    points = [(model, decoder, 1000 * by_decoder[key]["rtf_forward"], 100 * by_decoder[key]["wer"])
              for model, by_decoder in summaries.items() for key, decoder in (("greedy", "greedy"), ("lm", "LM"))]
    scatter_png(points, path, "forward time per second of audio (ms)", "test WER (%)",
                "demo: held-out sentences, greedy and lexicon + trigram LM decoding")


def write_report(summaries, md_path: Path, png_path: Path) -> str:
    audio = {round(s["greedy"]["audio_seconds"], 1) for s in summaries.values()}
    utterances = {s["greedy"]["utterances_transcribed"] for s in summaries.values()}
    table = markdown(table_rows(summaries))
    text = (f"Held-out test set: {', '.join(map(str, sorted(utterances)))} utterances, "
            f"{', '.join(map(str, sorted(audio)))} s of audio.\n\n{table}")
    Path(md_path).write_text(text)
    plot(summaries, Path(png_path))
    return text
