"""The squeeze and upsample of SEW's squeezed context network (SEW paper, section 3.3).

The transformer runs at a frame rate ``s`` times lower than the 20 ms feature rate:

- squeeze: ``x' = AvgPool(s)(x) + GELU(StridedPosConv(x))``, both cropped to the shorter length;
  the positional convolution of wav2vec 2.0 simply gets stride ``s``.
- upsample: ``GELU(Linear(D, s * D))`` turns each squeezed frame into ``s`` frames of width D,
  then the sequence is zero-padded back to the input length.

Lengths are carried through both steps so that an utterance in a padded batch sees exactly what it
would see alone: squeezed lengths come from the output-length formula of the pooling and of the
convolution, and upsampled frames that stem from padding are zeroed.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from fairseq.models.wav2vec.wav2vec2 import make_conv_pos
from torch.nn.utils.weight_norm import WeightNorm


def make_strided_pos_conv(dim: int, kernel: int, groups: int, stride: int) -> nn.Sequential:
    """wav2vec 2.0's positional convolution (weight norm, SamePad, GELU) with stride ``stride``.

    Built by fairseq's ``make_conv_pos`` so initialisation and parameter names
    (``0.weight_g``, ``0.weight_v``, ``0.bias``) are those of wav2vec 2.0 and the original SEW.
    """
    pos_conv = make_conv_pos(dim, kernel, groups)
    pos_conv[0].stride = (stride,)
    return pos_conv


def conv_weight(conv: nn.Conv1d) -> torch.Tensor:
    """The weight ``conv`` computes with now: under fairseq's weight norm (a pre-forward hook that
    recomputes ``conv.weight``) computed from ``weight_g`` and ``weight_v``, else the weight itself."""
    for hook in conv._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm):
            return hook.compute_weight(conv)
    return conv.weight


def run_pos_conv(pos_conv: nn.Sequential, x: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, D, T) -> (B, D, T') through the positional convolution at ``stride``, without changing
    the module (St-SEW runs one module at several strides)."""
    conv, same_pad, activation = pos_conv
    if conv.stride[0] == stride:
        return pos_conv(x)
    weight = conv_weight(conv)  # in the conv's own format: fp32 where precision.is_narrow keeps it
    y = F.conv1d(x.to(weight.dtype), weight, conv.bias, stride, conv.padding, conv.dilation, conv.groups)
    return activation(same_pad(y.to(x.dtype)))


def conv_output_lengths(lengths: torch.Tensor, kernel: int, stride: int, padding: int = 0) -> torch.Tensor:
    """Output length of a 1-D convolution or pooling (PyTorch's formula, no dilation)."""
    return torch.div(lengths + 2 * padding - kernel, stride, rounding_mode="floor") + 1


def lengths_to_padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool mask, True at padded positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def padding_mask_to_lengths(padding_mask: Optional[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """(B, T) padding mask (or None: nothing padded) -> (B,) lengths."""
    if padding_mask is None:
        return torch.full((x.size(0),), x.size(1), dtype=torch.long, device=x.device)
    return (~padding_mask).long().sum(-1)


def squeeze(
    x: torch.Tensor, pos_conv: nn.Sequential, factor: int, lengths: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Downsample (B, T, D) features by ``factor`` and add the positional convolution.

    Args:
        x: (B, T, D) features whose padded frames are already zero.
        pos_conv: the positional convolution (``make_strided_pos_conv``); it is run at stride
            ``factor``, so one module serves every factor (St-SEW samples it per step).
        factor: squeeze factor s >= 1; s = 1 is wav2vec 2.0's ``x + pos_conv(x)``.
        lengths: (B,) valid frames per utterance.
    Returns:
        (B, L, D) squeezed features and their (B,) lengths, L = floor(T / s) (at least 1).
    """
    conv = pos_conv[0]
    x = x.transpose(1, 2)  # (B, D, T)
    if x.size(-1) < factor:
        # fewer frames than one pooling window (e.g. a single 20 ms frame at s = 2): pool a zero
        # tail, as a longer padded batch would, instead of failing inside avg_pool1d. The window is
        # not valid (``lengths // factor`` is 0), so the squeezed frame is padding either way.
        x = F.pad(x, (0, factor - x.size(-1)))
    x_pool = F.avg_pool1d(x, factor, factor) if factor > 1 else x  # floor(T / s) frames
    # the convolution gives floor(T / s) frames for an even kernel, ceil(T / s) for an odd one
    # (SamePad drops one of floor(T / s) + 1 for even kernels): never fewer than the pooling
    x_conv = run_pos_conv(pos_conv, x, factor)[..., : x_pool.size(-1)]
    x = (x_pool + x_conv).transpose(1, 2)  # (B, L, D)

    conv_len = conv_output_lengths(lengths, conv.kernel_size[0], factor, conv.padding[0])
    conv_len = conv_len - pos_conv[1].remove  # SamePad drops the last frame for even kernels
    new_lengths = torch.minimum(torch.div(lengths, factor, rounding_mode="floor"), conv_len)
    return x, new_lengths.clamp(min=0)


def squeeze_padded(
    x: torch.Tensor, padding_mask: Optional[torch.Tensor], pos_conv: nn.Sequential, factor: int
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``squeeze`` for a padded batch: (B, T, D) and (B, T) mask (True = padding, or None).

    Zeroes the padded frames first, so an utterance's squeezed frames do not depend on what pads it.
    Returns (B, L, D) squeezed frames, their (B,) lengths, and the (B, L) mask (None if unpadded).
    """
    lengths = padding_mask_to_lengths(padding_mask, x)
    if padding_mask is not None:
        x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
    # fewer frames than ``factor`` squeeze into one frame that is not valid (see ``squeeze``): it
    # needs a mask even when nothing is padded, so the transformer sees what it sees in a batch
    too_short = x.size(1) < factor
    x, sq_lengths = squeeze(x, pos_conv, factor, lengths)
    masked = padding_mask is not None or too_short
    sq_mask = lengths_to_padding_mask(sq_lengths, x.size(1)) if masked else None
    return x, sq_lengths, sq_mask


class Upsample(nn.Sequential):
    """``GELU(Linear(D, s*D))`` reshaped to ``s`` frames per squeezed frame (SEW eq. in section 3.3).

    Parameter names (``0.weight``, ``0.bias``) follow the original release's ``encoder.upsample``.
    """

    def __init__(self, dim: int, factor: int):
        super().__init__(nn.Linear(dim, dim * factor), nn.GELU())
        self.factor = factor
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Start as frame repetition: each of the ``s`` output blocks is the identity plus BERT-scale
        noise (std 0.02), bias zero.

        The original release draws the whole projection at random (BERT init). From such a start,
        CTC training after a short pre-training sat on the all-blank plateau: a tiny SEW (s = 2)
        fitting 8 utterances kept its loss at 109-110 for 200 Adam steps (lr 1e-3 and 3e-3),
        where s = 1 or this init fell below 6 within 80 steps. Loaded checkpoints replace the init.
        """
        linear = self[0]
        nn.init.normal_(linear.weight, std=0.02)
        with torch.no_grad():
            linear.weight += torch.eye(linear.in_features).repeat(self.factor, 1)
        nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, target_len: int) -> torch.Tensor:
        """(B, L, D) squeezed frames with (B,) lengths -> (B, target_len, D).

        Frames produced from padded squeezed frames are zero, so a padded batch gives each
        utterance the same output as running it alone (where those frames are the zero tail).
        They are selected as zeros rather than multiplied by 0: an utterance with no squeezed frame
        has a fully masked attention row, which some runtimes (onnxruntime) turn into NaN, and
        NaN * 0 would carry it on. The pad to ``target_len`` is always applied (L * s <= T, so by
        zero frames when nothing is missing), which a trace records for every length.
        """
        bsz, sq_len, dim = x.shape
        x = super().forward(x).reshape(bsz, sq_len * self.factor, dim)  # (B, L*s, D)
        valid = ~lengths_to_padding_mask(lengths * self.factor, x.size(1))
        x = torch.where(valid.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        x = F.pad(x, (0, 0, 0, target_len - x.size(1)))
        return x[:, :target_len]
