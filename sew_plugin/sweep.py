"""``sew sweep``: one checkpoint at several operating points: WER, forward time and MACs, and the Pareto set.

The model is loaded once; each point fixes the St-SEW configuration (S_f, S_k, S_q) and transcribes
the whole manifest as ``sew infer`` does (same decoders, every utterance counted). MACs are counted
with torch's ``FlopCounterMode`` on 10 s of audio at each point. A point is on the Pareto front when
no other point is at least as fast and at least as accurate, and strictly better in one of them.

    sew sweep ckpt.pt data/dev_other.tsv --points 1,1,1 2,1,1 2,2,1 2,2,2 --out sweep/

writes ``sweep.md``, ``sweep.csv`` and ``sweep.png`` (WER against forward time) in ``--out``.
"""

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List

import torch

from .infer import add_decoding_arguments, load_for_inference, operating_point, transcribe

MAC_SECONDS = 10.0


@dataclass
class Point:
    point: str
    wer: float
    uer: float
    forward_ms_per_s: float
    gmacs_per_10s: float
    speedup: float = 1.0  # forward time of the first point over this one's
    pareto: bool = False


def mark_pareto(points: List[Point]) -> None:
    """Set ``pareto`` on every point that no other point dominates in (forward time, WER)."""
    for p in points:
        p.pareto = not any(
            q is not p and q.forward_ms_per_s <= p.forward_ms_per_s and q.wer <= p.wer
            and (q.forward_ms_per_s < p.forward_ms_per_s or q.wer < p.wer)
            for q in points
        )


def to_markdown(points: List[Point]) -> str:
    head = (f"| operating point | WER | letter error | forward ms per s of audio | speed-up vs {points[0].point} | "
            "GMACs per 10 s | Pareto |\n|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {p.point} | {100 * p.wer:.2f}% | {100 * p.uer:.2f}% | {p.forward_ms_per_s:.1f} | {p.speedup:.2f}x | "
        f"{p.gmacs_per_10s:.2f} | {'*' if p.pareto else ''} |\n"
        for p in points
    )


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=Path, help="fine-tuned CTC checkpoint of a St-SEW model")
    p.add_argument("manifest", type=Path, help="fairseq manifest (.tsv) with labels beside it")
    p.add_argument("--points", nargs="+", required=True, help="St-SEW operating points 'S_f,S_k,S_q'")
    p.add_argument("--out", type=Path, help="write sweep.md, sweep.csv and sweep.png here")
    add_decoding_arguments(p)


def main(args) -> int:
    from .bench import count_macs
    from .plots import scatter_png

    model, tgt_dict, decoder, normalize = load_for_inference(args, "sew sweep")
    x = torch.randn(1, int(16000 * MAC_SECONDS), device=args.device)
    points = []
    for point in args.points:
        operating_point(model, point, "sew sweep")
        _, summary = transcribe(model, tgt_dict, args.manifest, decoder, args, normalize)
        if summary.wer is None:
            raise SystemExit(f"sew sweep: error: no references beside {args.manifest} (.{args.labels})")
        macs = count_macs(model, lambda wav: model(source=wav, padding_mask=None), x)
        points.append(Point(point, summary.wer, summary.uer, 1000 * summary.rtf_forward, macs / 1e9))
        print(f"{point}: WER {100 * summary.wer:.2f}%, forward {1000 * summary.rtf_forward:.1f} ms per s, "
              f"{macs / 1e9:.2f} GMACs per {MAC_SECONDS:g} s", flush=True)
    for p in points:
        p.speedup = points[0].forward_ms_per_s / p.forward_ms_per_s
    mark_pareto(points)
    table = to_markdown(points)
    print(f"\n{table}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sweep.md").write_text(f"{args.checkpoint} on {args.manifest} ({args.decoder})\n\n{table}")
        with open(args.out / "sweep.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(asdict(points[0])))
            writer.writeheader()
            writer.writerows(asdict(p) for p in points)
        scatter_png([("Pareto front" if p.pareto else "dominated", p.point, p.forward_ms_per_s, 100 * p.wer)
                     for p in points], args.out / "sweep.png",
                    "forward time per second of audio (ms)", "WER (%)", f"{args.checkpoint.name}: operating points")
    return 0
