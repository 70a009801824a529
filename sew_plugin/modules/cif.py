"""Continuous integrate-and-fire (CIF) with the lambda modification of once-for-all compression
(Chen, Meng and Lee, ICASSP 2023).

Every input frame t carries a weight alpha_t; the weighted frames are integrated until the running
sum reaches the next integer, where one output frame fires. A frame whose weight crosses an integer
is split between the two outputs. Vectorised over time with the cumulative sum (no Python loop over
frames; the only loop is over the number of integers one frame crosses, 1 for alpha <= 1).

``CifCompressor`` is what a model holds: the alpha predictor, the choice of lambda (sampled per
batch from [0, lambda_max) in pre-training, fixed, or learned through a sigmoid onto that range),
and the losses that keep the unmodified alpha at a useful rate (a target rate, or segment guidance
when phone-like boundaries are given).
"""

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .squeeze import lengths_to_padding_mask, padding_mask_to_lengths


class AlphaPredictor(nn.Module):
    """alpha_t in (0, 1) from (B, T, C) features: Conv1d(k=5) -> LayerNorm -> ReLU -> Linear -> sigmoid."""

    def __init__(self, dim: int, kernel: int = 5):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, T, C) -> (B, T) weights; padded frames get 0 and are not seen by the convolution."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)
        alpha = torch.sigmoid(self.proj(torch.relu(self.norm(h)))).squeeze(-1)
        return alpha.masked_fill(padding_mask, 0.0) if padding_mask is not None else alpha


def scale_alpha(alpha: torch.Tensor, lam: float) -> torch.Tensor:
    """The lambda modification (eqs. 1-2) of (B, T) weights whose padded frames are 0.

    lambda < 1 moves every weight towards 1 (lambda = 0: one output per input frame); lambda = 1 is
    alpha itself; lambda in (1, 2) shrinks the weights (towards one output per utterance at 2).
    """
    if not 0 <= lam < 2:
        raise ValueError(f"CIF lambda must be in [0, 2), got {lam}")
    valid = (alpha > 0).to(alpha.dtype)
    if lam < 1:
        return (lam * alpha + (1 - lam)) * valid
    shrunk = (2 - lam) * alpha
    total = shrunk.sum(1, keepdim=True)
    return shrunk / torch.clamp(total, max=1.0).clamp(min=torch.finfo(alpha.dtype).tiny)


def cif(
    h: torch.Tensor, alpha: torch.Tensor, keep_tail: bool = False, min_frames: int = 1
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integrate (B, T, C) frames with (B, T) weights (0 on padding) and fire at every integer.

    Returns (B, L, C) outputs, their (B,) lengths, and (B, L) durations for upsampling back: each
    input frame counted once, for the output that took most of its weight (at least 1 per output). Utterance b has floor(sum alpha_b) outputs;
    with ``keep_tail`` (inference) a leftover weight >= 0.5 fires one more, scaled to weight 1.
    Fewer than ``min_frames`` outputs are topped up the same way from the tail.
    """
    bsz, frames, dim = h.shape
    csum = alpha.double().cumsum(1)  # float64: floor() of the running sum must not drift
    right = csum.floor().long()
    left = torch.cat([right.new_zeros(bsz, 1), right[:, :-1]], 1)
    fires = right - left
    w_right = torch.where(fires > 0, csum - right, torch.zeros_like(csum))
    w_left = alpha.double() - w_right - (fires - 1).clamp(min=0)

    totals = csum[:, -1] if frames else alpha.new_zeros(bsz).double()
    whole = totals.floor().long()
    tail = totals - whole
    keep = (keep_tail & (tail >= 0.5)) | (whole < min_frames) & (tail > 0)
    lengths = whole + keep.long()
    slots = int(right.max()) + 2 if frames else 1
    out = h.new_zeros(bsz, slots, dim, dtype=torch.float64)
    durations = h.new_zeros(bsz, slots, dtype=torch.float64)
    hd = h.double()

    def add(index, weight):
        out.scatter_add_(1, index.unsqueeze(-1).expand(-1, -1, dim), weight.unsqueeze(-1) * hd)

    add(left, w_left)
    add(right, w_right)
    for k in range(1, int(fires.max()) if frames else 0):  # frames that cross more than one integer
        add((left + k).clamp(max=slots - 1), (fires > k).double())
    owner = torch.where(w_left >= w_right, left, right).clamp(max=slots - 1)
    durations.scatter_add_(1, owner, (alpha > 0).double())

    # the tail slot (index `whole`) is kept only where chosen, scaled to weight 1
    rows = torch.arange(bsz, device=h.device)
    scale = torch.where(keep, 1.0 / tail.clamp(min=1e-12), torch.zeros_like(tail))
    out[rows, whole.clamp(max=slots - 1)] *= scale.unsqueeze(-1)
    length = int(lengths.max()) if bsz else 0
    out, durations = out[:, :length], durations[:, :length]
    valid = torch.arange(length, device=h.device)[None, :] < lengths[:, None]
    out = out * valid.unsqueeze(-1)
    return out.to(h.dtype), lengths, (durations.clamp(min=1) * valid).long()


def upsample_by_durations(x: torch.Tensor, durations: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Repeat each of the (B, L, ...) outputs ``durations`` (B, L) times: back to about the input rate.

    What CTC needs when the compressed frames are fewer than the labels. Returns (B, T', ...) frames
    (zero beyond each utterance) and their (B,) lengths, T' = max total duration.
    """
    ends = durations.cumsum(1)  # (B, L): exclusive end of each output's run
    lengths = ends[:, -1] if durations.size(1) else durations.new_zeros(durations.size(0))
    total = int(lengths.max()) if lengths.numel() else 0
    steps = torch.arange(total, device=x.device).expand(x.size(0), total).contiguous()
    source = torch.searchsorted(ends, steps, right=True).clamp(max=max(x.size(1) - 1, 0))
    index = source.view(*source.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    out = x.gather(1, index)
    valid = steps < lengths[:, None]
    return out * valid.view(*valid.shape, *([1] * (x.dim() - 2))).to(out.dtype), lengths


def rate_loss(alpha: torch.Tensor, frames: torch.Tensor, target: float) -> torch.Tensor:
    """Mean over utterances of |mean alpha - target| (unmodified alpha, valid frames only)."""
    mean = alpha.float().sum(1) / frames.clamp(min=1)  # float32 under fp16 training, like the loss it joins
    return (mean - target).abs().mean()


def guidance_loss(alpha: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """Segment guidance on the unmodified alpha: frame loss + boundary loss.

    ``boundaries`` (B, K) holds the exclusive end frame of each segment (e.g. unsupervised phone
    segments), ascending, padded with -1. Frame loss: mean |alpha - 1 / segment length| over the
    segmented frames (each segment should integrate to one output); boundary loss: mean
    |cumsum(alpha) at a segment end - segments so far|. In float32: under fp16 training the running
    sum of a long utterance (hundreds) has a spacing of 0.25 in fp16.
    """
    alpha = alpha.float()
    bsz, frames = alpha.shape
    valid = boundaries >= 0
    ends = boundaries.clamp(min=0)
    starts = torch.cat([ends.new_zeros(bsz, 1), ends[:, :-1]], 1)
    seg_len = (ends - starts).clamp(min=1).to(alpha.dtype)
    # segment index of each frame: number of segment ends at or before it
    t = torch.arange(frames, device=alpha.device)
    seg = (t[None, :, None] >= torch.where(valid, ends, frames + 1)[:, None, :]).sum(-1)  # (B, T)
    inside = seg < valid.sum(1, keepdim=True)
    pseudo = seg_len.gather(1, seg.clamp(max=boundaries.size(1) - 1)).reciprocal()
    frame_loss = ((alpha - pseudo).abs() * inside).sum() / inside.sum().clamp(min=1)
    csum = alpha.cumsum(1).gather(1, (ends - 1).clamp(min=0))
    count = torch.arange(1, boundaries.size(1) + 1, device=alpha.device, dtype=alpha.dtype).expand(bsz, -1)
    boundary_loss = ((csum - count).abs() * valid).sum() / valid.sum().clamp(min=1)
    return frame_loss + boundary_loss


@dataclass
class CifResult:
    """One compression of a batch (reported as ``cif``, ``sew_plugin.modules.side_outputs``, for
    logging, CTC's durations and the frame period)."""

    x: torch.Tensor  # (B, L, C) compressed frames
    padding_mask: torch.Tensor  # (B, L), True at padding
    lengths: torch.Tensor  # (B,) compressed frames per utterance
    durations: torch.Tensor  # (B, L) input frames integrated by each output
    alpha: torch.Tensor  # (B, T) unmodified weights, 0 on padding
    frames: torch.Tensor  # (B,) valid input frames
    lam: float
    frame_ms: float  # period of the input frames (the feature extractor's, 20 ms for WFE-O and WFE-C)

    @property
    def frame_period_ms(self) -> float:
        """Mean frame period of the batch: input duration over compressed frames."""
        return self.frame_ms * float(self.frames.sum()) / max(float(self.lengths.sum()), 1.0)


class CifCompressor(nn.Module):
    """Alpha predictor + lambda + CIF, between the front end and the context network.

    Parameter names: ``alpha.conv.*``, ``alpha.norm.*``, ``alpha.proj.*`` and, with a learnable
    lambda, ``lambda_logit``.
    """

    def __init__(self, dim: int, lambda_max: float = 1.0, lam: Optional[float] = None, rate_target: float = 0.25,
                 frame_ms: float = 20.0):
        super().__init__()
        self.frame_ms = frame_ms  # of the input frames
        if not 0 < lambda_max <= 2:
            raise ValueError(f"model.cif_lambda_max must be in (0, 2], got {lambda_max}")
        if not 0 < rate_target < 1:
            raise ValueError(f"model.cif_rate_target must be in (0, 1), got {rate_target}")
        self.alpha = AlphaPredictor(dim)
        # start at the target rate, so compression is already near it before training moves it
        nn.init.constant_(self.alpha.proj.bias, math.log(rate_target / (1 - rate_target)))
        self.lambda_max, self.rate_target = lambda_max, rate_target
        self.lambda_logit: Optional[nn.Parameter] = None
        self.set_lambda(lam)

    def set_lambda(self, lam: Optional[float], learnable: bool = False) -> None:
        """Fix lambda (any value in [0, 2)), learn it starting there, or sample it per batch (None)."""
        if lam is not None and not 0 <= lam < 2:
            raise ValueError(f"CIF lambda (model.cif_lambda) must be in [0, 2), got {lam}")
        if learnable:
            if lam is None or not 0 < lam < self.lambda_max:
                raise ValueError(f"a learnable CIF lambda starts inside (0, model.cif_lambda_max="
                                 f"{self.lambda_max}), got {lam}")
            p = lam / self.lambda_max
            self.lambda_logit = nn.Parameter(torch.tensor(math.log(p / (1 - p))))
        else:
            self.lambda_logit = None
        self.fixed_lambda = lam

    def current_lambda(self) -> Union[float, torch.Tensor]:
        if self.lambda_logit is not None:
            return self.lambda_max * torch.sigmoid(self.lambda_logit)
        if self.fixed_lambda is not None:
            return self.fixed_lambda
        return min(float(np.random.uniform(0.0, self.lambda_max)), 2 - 1e-6)  # lambda = 2 is excluded

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor], min_frames: int = 1) -> CifResult:
        """(B, T, C) frames at 20 ms -> compressed frames; the tail is kept (>= 0.5) only in evaluation."""
        alpha = self.alpha(x, padding_mask)
        lam = self.current_lambda()
        out, lengths, durations = cif(x, scale_alpha(alpha, lam), keep_tail=not self.training, min_frames=min_frames)
        frames = padding_mask_to_lengths(padding_mask, x)
        return CifResult(out, lengths_to_padding_mask(lengths, out.size(1)), lengths, durations, alpha, frames,
                         float(lam.detach()) if torch.is_tensor(lam) else lam, self.frame_ms)

    def loss(self, result: CifResult, boundaries: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The loss on the unmodified alpha: segment guidance when boundaries are given, else the rate loss."""
        if boundaries is not None:
            return guidance_loss(result.alpha, boundaries)
        return rate_loss(result.alpha, result.frames, self.rate_target)
