"""One checkpoint at several operating points: WER, forward time and MACs of each, and the Pareto set
(``sew sweep``, ``sew_plugin.cli.sweep``, says how each kind of point is set and measured).

A point is on the Pareto front when no other point is at least as fast and at least as accurate,
and strictly better in one of them.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch

from .bench import count_macs
from .transcribe import Batching, check_inputs, transcribe

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
    parameters: int = 0  # the model's (the same at every point)


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


def sweep(model, manifest: Path, decoder, kind: str, settings: Sequence, apply: Callable, labels: Optional[str] = None,
          normalize: bool = False, batching: Batching = Batching(warm_every_batch=True), device: str = "cpu",
          log: Callable[[str], None] = print, inputs=None) -> List[Point]:
    """Transcribe ``manifest`` at each of ``settings`` (``kind``: ``points`` for St-SEW operating
    points, ``cif_lambdas``, or ``thresholds`` of an exit policy), fixed on the model by ``apply(setting)``;
    the points with their speed-ups over the first and the Pareto front marked. ``inputs``: what
    ``check_inputs`` returned for the manifest, if the caller checked it already."""
    x = torch.randn(1, int(16000 * MAC_SECONDS), device=device)
    inputs = inputs if inputs is not None else check_inputs(manifest, labels)  # once for every point
    if inputs[1] is None:
        raise ValueError(f"{manifest}: no references beside it (a .ltr file): a sweep compares WERs")
    points = []
    for setting in settings:
        apply(setting)
        _, summary = transcribe(model, manifest, decoder, labels, normalize, batching, inputs)
        point = Point(setting if kind == "points" else f"{setting:g}", summary.wer, summary.uer,
                      1000 * summary.rtf_forward, parameters=summary.parameters)
        if kind == "points":
            point.gmacs_per_10s = count_macs(model, lambda wav: model(source=wav, padding_mask=None), x) / 1e9
        elif kind == "cif_lambdas":  # compression depends on the audio: its rate on this manifest
            point.frame_period_ms = summary.frame_period_ms
        else:
            point.mean_exit_layer = summary.mean_exit_layer
        points.append(point)
        log(f"{point.point}: WER {100 * point.wer:.2f}%, forward {point.forward_ms_per_s:.1f} ms per s")
    for p in points:
        p.speedup = points[0].forward_ms_per_s / p.forward_ms_per_s
    mark_pareto(points)
    return points
