"""Recordings of any length through a CTC model: overlapping windows, run in padded batches, their
frame log-probabilities stitched into one (T, V) sequence.

A window of W samples every H samples (H = W - 2 x context): consecutive windows overlap by twice
the context, and each output frame is taken from the window in which it lies farthest from an edge
(the boundary between two windows' frames is the middle of their overlap), so every kept frame saw
at least ``context`` seconds of audio on both sides. Memory is bounded by the window, and time
grows linearly with the audio.

Window starts are multiples of ``ALIGN_FRAMES`` feature frames (each times the input downsampling
factor), so a window's frames are frames of the whole: frame t of a window starting at sample s is
frame s / P + t of the recording (P samples per CTC frame). The convolutional front end is then
exact; a GroupNorm front end gets the whole recording's statistics
(``modules.masked_group_norm.recording_statistics``); the transformer sees only its window, which
is what the context is for.
"""

import contextlib
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..data.audio import SAMPLE_RATE

MIN_CONTEXT = 0.1  # seconds: windows then overlap by at least 0.2 s, more than a frame's 25 ms receptive field

# window starts fall on multiples of this many feature frames: every squeeze (or St-SEW pooling)
# factor of 1, 2, 3, 4, 6, 8, 12 or 24 then pools the same frames in a window as in the whole
ALIGN_FRAMES = 24


@dataclass
class Windowing:
    """``window`` seconds per forward, of which ``context`` seconds at each inner edge are overlap
    (their frames come from the neighbour); ``batch_size`` windows per forward."""

    window: float = 20.0
    context: float = 2.0
    batch_size: int = 4

    def __post_init__(self):
        if self.context < MIN_CONTEXT:
            raise ValueError(f"--context {self.context}: at least {MIN_CONTEXT} s, so that windows overlap by more "
                             f"than the feature extractor's receptive field")
        if not self.window > 2 * self.context:
            raise ValueError(f"--window {self.window}: must be longer than twice the context ({self.context} s)")


@dataclass
class Stitched:
    """A recording's CTC output: (T, V) log-probabilities on the CPU and the audio per frame."""

    lprobs: torch.Tensor
    frame_period_ms: float
    windows: int
    exit_layers: Optional[List[int]] = None  # early-exit models under a policy: each window's exit


def samples_per_frame(model) -> Tuple[int, int]:
    """(samples per CTC frame, samples between window starts' alignment points) of a CTC model;
    ``ValueError`` for a model whose frames have no fixed period (CIF without ``cif_upsample``)."""
    period = model.frame_period_ms() if hasattr(model, "frame_period_ms") else 20.0
    if period is None:
        raise ValueError("this CIF model's frames have no fixed period (model.cif_upsample is off), so neither "
                         "windows nor word times: transcribe its manifests with sew infer")
    frame = round(period * SAMPLE_RATE / 1000)
    steps = getattr(getattr(model, "cfg", None), "ctc_frames_per_step", 1) or 1
    return frame, frame * steps * ALIGN_FRAMES


def hop_samples(windowing: Windowing, align: int) -> int:
    """Samples between window starts: the window less twice the context, rounded down to ``align``;
    ``ValueError`` when that leaves none (check it once, before any recording)."""
    hop = (int(windowing.window * SAMPLE_RATE) - int(2 * windowing.context * SAMPLE_RATE)) // align * align
    if hop <= 0:
        raise ValueError(f"--window {windowing.window} with --context {windowing.context} leaves no step between "
                         f"windows (this model's windows start on multiples of {align / SAMPLE_RATE:.2f} s)")
    return hop


def plan(samples: int, windowing: Windowing, align: int) -> List[Tuple[int, int]]:
    """The (start, stop) sample ranges of the windows over ``samples``: one when it fits a window,
    else windows every ``hop_samples`` until one reaches the end."""
    length = int(windowing.window * SAMPLE_RATE)
    if samples <= length:
        return [(0, samples)]
    hop = hop_samples(windowing, align)
    ranges, start = [], 0
    while True:
        ranges.append((start, min(start + length, samples)))
        if start + length >= samples:
            return ranges
        start += hop


def kept_frames(offsets: List[int], counts: List[int]) -> List[Tuple[int, int]]:
    """For windows whose frames are recording frames ``offsets[k] ... offsets[k] + counts[k] - 1``, the
    (first, last + 1) recording frames each contributes: split at the middle of each overlap."""
    bounds = [0]
    for k in range(len(offsets) - 1):
        bounds.append((offsets[k + 1] + offsets[k] + counts[k]) // 2)
    bounds.append(offsets[-1] + counts[-1])
    spans = [(bounds[k], bounds[k + 1]) for k in range(len(offsets))]
    if any(not o <= lo <= hi <= o + n for (lo, hi), o, n in zip(spans, offsets, counts)):
        raise RuntimeError(f"windows at frames {offsets} with {counts} frames do not overlap: frames would be lost")
    return spans


@torch.no_grad()
def forward_windows(model, wav: torch.Tensor, windowing: Windowing = Windowing(), device: str = "cpu",
                    normalize: bool = False, progress: Optional[Callable[[float], None]] = None) -> Stitched:
    """The stitched CTC log-probabilities of the (S,) 16 kHz waveform ``wav`` (see the module's
    docstring). ``normalize``: layer-normalise the whole waveform first, as a checkpoint's task did;
    ``progress`` is called after each batch of windows with the share of ``wav`` run so far."""
    # fairseq comes in with it: imported here, `sew transcribe` checks its options and files first
    from ..modules.masked_group_norm import given_statistics, recording_statistics

    if normalize:
        wav = F.layer_norm(wav, wav.shape)
    frame, align = samples_per_frame(model)
    ranges = plan(wav.numel(), windowing, align)
    statistics = recording_statistics(model, wav) if len(ranges) > 1 else None
    pieces, exits = [], []
    offsets, counts = [], []
    for first in range(0, len(ranges), windowing.batch_size):
        batch = ranges[first : first + windowing.batch_size]
        longest = max(stop - start for start, stop in batch)
        source = torch.zeros(len(batch), longest)
        padding = torch.ones(len(batch), longest, dtype=torch.bool)
        for row, (start, stop) in enumerate(batch):
            source[row, : stop - start] = wav[start:stop]
            padding[row, : stop - start] = False
        scope = given_statistics(*(s[None].expand(len(batch), -1) for s in statistics)) if statistics else contextlib.nullcontext()
        with scope:
            out = model(source=source.to(device), padding_mask=padding.to(device))
        lprobs = model.get_normalized_probs(out, log_probs=True).transpose(0, 1).float().cpu()  # (B, T, V)
        mask = out.get("padding_mask")
        frames = (~mask).sum(-1).tolist() if mask is not None else [lprobs.size(1)] * len(batch)
        for row, (start, _) in enumerate(batch):
            pieces.append(lprobs[row, : frames[row]])
            offsets.append(start // frame)
            counts.append(frames[row])
        if "exit_layer" in out:
            exits += out["exit_layer"].tolist()
        if progress is not None:
            progress(batch[-1][1] / wav.numel())
    spans = kept_frames(offsets, counts)
    lprobs = torch.cat([piece[lo - offset : hi - offset] for piece, offset, (lo, hi) in zip(pieces, offsets, spans)])
    return Stitched(lprobs, 1000 * frame / SAMPLE_RATE, len(ranges), exits or None)
