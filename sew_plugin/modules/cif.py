"""Continuous integrate-and-fire (CIF) with the lambda modification of once-for-all compression
(paper 003; shared/reference/methods.md section 2).

Every input frame t carries a weight alpha_t; the weighted frames are integrated until the running
sum reaches the next integer, where one output frame fires. A frame whose weight crosses an integer
is split between the two outputs. Vectorised over time with the cumulative sum (no Python loop over
frames; the only loop is over the number of integers one frame crosses, 1 for alpha <= 1).
"""

from typing import Optional, Tuple

import torch
from torch import nn


class AlphaPredictor(nn.Module):
    """alpha_t in (0, 1) from (B, T, C) features: Conv1d(k=5) -> LayerNorm -> ReLU -> Linear -> sigmoid."""

    def __init__(self, dim: int, kernel: int = 5):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, T, C) -> (B, T) weights; padded frames get 0."""
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

    Returns (B, L, C) outputs, their (B,) lengths, and (B, L) durations (input frames that
    contributed to each output, for upsampling back). Utterance b has floor(sum alpha_b) outputs;
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
        durations.scatter_add_(1, index, (weight > 0).double())

    add(left, w_left)
    add(right, w_right)
    for k in range(1, int(fires.max()) if frames else 0):  # frames that cross more than one integer
        add((left + k).clamp(max=slots - 1), (fires > k).double())

    # the tail slot (index `whole`) is kept only where chosen, scaled to weight 1
    rows = torch.arange(bsz, device=h.device)
    scale = torch.where(keep, 1.0 / tail.clamp(min=1e-12), torch.zeros_like(tail))
    out[rows, whole.clamp(max=slots - 1)] *= scale.unsqueeze(-1)
    length = int(lengths.max()) if bsz else 0
    out, durations = out[:, :length], durations[:, :length]
    valid = torch.arange(length, device=h.device)[None, :] < lengths[:, None]
    out = out * valid.unsqueeze(-1)
    return out.to(h.dtype), lengths, (durations * valid).long()
