"""``sew sweep``: one checkpoint at several operating points: WER, forward time and MACs, and the Pareto set.

The model is loaded once; each point fixes a St-SEW configuration (S_f, S_k, S_q) with ``--points``,
a CIF lambda with ``--cif-lambdas`` (the table gives the resulting mean frame period), or an
early-exit threshold with ``--exit-policy`` and ``--thresholds`` (the layout of Zaiem et al.'s
table: threshold, mean exit layer, WER, time), and transcribes the whole manifest as ``sew infer``
does (same decoders, every utterance counted). Each batch of each point runs ``--warmup`` untimed
forwards before its timed one: every new batch shape has first-call costs (allocations, kernel
choices), and without this the first point carried them, so the order of the points changed their
times. The forward work of a sweep is doubled; its times are steady-state. MACs are counted with
torch's ``FlopCounterMode`` on 10 s of audio at each St-SEW point (an exit policy's compute depends on the utterance: its mean exit
layer says it). A point is on the Pareto front when no other point is at least as fast and at least
as accurate, and strictly better in one of them.

    sew sweep ckpt.pt data/dev_other.tsv --points 1,1,1 2,1,1 2,2,1 2,2,2 --out sweep/
    sew sweep ckpt.pt data/dev_other.tsv --cif-lambdas 0 0.5 1 1.5 --out sweep/
    sew sweep ckpt.pt data/dev_other.tsv --exit-policy entropy --thresholds 0.01 0.03 0.06 --out sweep/

writes ``sweep.md``, ``sweep.csv`` and ``sweep.png`` (WER against forward time) in ``--out``.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from .data.errors import DataError
from .infer import (add_decoding_arguments, check_inputs, cif_lambda, label_path, load_for_inference, operating_point,
                    transcribe)

MAC_SECONDS = 10.0


@dataclass
class Point:
    point: str
    wer: float
    uer: float
    forward_ms_per_s: float
    gmacs_per_10s: Optional[float] = None  # St-SEW points
    mean_exit_layer: Optional[float] = None  # early-exit thresholds
    frame_period_ms: Optional[float] = None  # CIF lambdas
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


EXTRA_COLUMNS = (("mean_exit_layer", "mean exit layer"), ("frame_period_ms", "mean frame period (ms)"),
                 ("gmacs_per_10s", "GMACs per 10 s"))


def to_markdown(points: List[Point], setting: str) -> str:
    key, extra = next((k, name) for k, name in EXTRA_COLUMNS if getattr(points[0], k) is not None)
    head = (f"| {setting} | {extra} | WER | letter error | forward ms per s of audio | speed-up vs {points[0].point} | "
            "Pareto |\n|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {p.point} | {getattr(p, key):.2f} | {100 * p.wer:.2f}% | "
        f"{100 * p.uer:.2f}% | {p.forward_ms_per_s:.1f} | {p.speedup:.2f}x | {'*' if p.pareto else ''} |\n"
        for p in points
    )


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=Path, help="fine-tuned CTC checkpoint: St-SEW (--points) or with exits (--thresholds)")
    p.add_argument("manifest", type=Path, help="fairseq manifest (.tsv) with labels beside it")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--points", nargs="+", help="St-SEW operating points 'S_f,S_k,S_q'")
    group.add_argument("--cif-lambdas", nargs="+", type=float, help="CIF lambdas in [0, 2)")
    group.add_argument("--thresholds", nargs="+", type=float, help="early-exit thresholds of --exit-policy")
    p.add_argument("--out", type=Path, help="write sweep.md, sweep.csv and sweep.png here")
    add_decoding_arguments(p)


def main(args) -> int:
    from .bench import count_macs
    from .infer import exit_policy
    from .reports import scatter_png, write_tables

    if args.thresholds and args.exit_policy in (None, "layer"):
        raise SystemExit("sew sweep: error: --thresholds needs --exit-policy entropy, similarity or nbest")
    if args.exit_policy and not args.thresholds:
        raise SystemExit("sew sweep: error: --exit-policy goes with --thresholds")
    _, references = check_inputs(args.manifest, args.labels)  # bad input stops here, before the model loads
    if references is None:  # the WER column needs them
        raise DataError(label_path(args.manifest, None), "label file not found: sew sweep needs references")
    model, tgt_dict, decoder, normalize = load_for_inference(args, "sew sweep")
    x = torch.randn(1, int(16000 * MAC_SECONDS), device=args.device)
    settings = args.points or args.cif_lambdas or args.thresholds
    points = []
    for setting in settings:
        if args.points:
            operating_point(model, setting, "sew sweep")
        elif args.cif_lambdas:
            cif_lambda(model, setting, "sew sweep")
        else:
            exit_policy(model, args, decoder, setting, "sew sweep")
        _, summary = transcribe(model, tgt_dict, args.manifest, decoder, args, normalize, warm_every_batch=True)
        point = Point(setting if args.points else f"{setting:g}", summary.wer, summary.uer, 1000 * summary.rtf_forward)
        if args.points:
            point.gmacs_per_10s = count_macs(model, lambda wav: model(source=wav, padding_mask=None), x) / 1e9
        elif args.cif_lambdas:  # compression depends on the audio: its rate on this manifest
            point.frame_period_ms = summary.frame_period_ms
        else:
            point.mean_exit_layer = summary.mean_exit_layer
        points.append(point)
        print(f"{point.point}: WER {100 * point.wer:.2f}%, forward {point.forward_ms_per_s:.1f} ms per s", flush=True)
    for p in points:
        p.speedup = points[0].forward_ms_per_s / p.forward_ms_per_s
    mark_pareto(points)
    setting_name = ("operating point" if args.points else "CIF lambda" if args.cif_lambdas
                    else f"{args.exit_policy} threshold")
    table = to_markdown(points, setting_name)
    print(f"\n{table}")
    if args.out:
        write_tables(args.out, "sweep", f"{args.checkpoint} on {args.manifest} ({args.decoder})", table, points)
        scatter_png([("Pareto front" if p.pareto else "dominated", p.point, p.forward_ms_per_s, 100 * p.wer)
                     for p in points], args.out / "sweep.png",
                    "forward time per second of audio (ms)", "WER (%)", f"{args.checkpoint.name}: {setting_name}s")
    return 0
