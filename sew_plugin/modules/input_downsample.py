"""Input downsampling at fine-tuning time (Zaiem et al., ICASSP 2023).

The cost of an SSL encoder grows with the number of frames it sees, so Zaiem et al. shorten the 16 kHz
waveform by a factor f in {2, 3, 4} before the SSL model and fine-tunes the model on the shorter
input. With WavLM Large on train-clean-100 this cuts 61.3% of the MACs for +0.81 test-clean WER.
Three ways to shorten the waveform:

- ``"conv"``: a learned ``Conv1d(1, 1, 161, stride=f)``. It starts as the ``"resample"`` filter,
  so fine-tuning begins from a properly anti-aliased 16/f kHz signal instead of from a random
  filter that aliases everything, and may then learn whatever shortening suits the task.
- ``"avgpool"``: ``AvgPool1d(10, stride=f, padding=2)``, the paper's setting.
- ``"resample"``: fixed resampling to 16/f kHz: a 161-tap Kaiser-windowed sinc lowpass with its
  cutoff at the new Nyquist frequency, applied with stride f.

At f = 4 the encoder's frame rate can fall below what character CTC needs (a target cannot be
longer than its input); the paper's fix, a head that emits 2 output frames per encoder frame, is
``expand_ctc_frames`` and ``expand_padding_mask``.

Lengths are carried through so that an utterance in a padded batch gets exactly what it gets alone:
padded samples are zeroed before filtering (they then act as the zero padding of the
convolution), and outputs beyond each utterance's output length are zeroed.
"""

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config_rules import choose
from .squeeze import conv_output_lengths, lengths_to_padding_mask, padding_mask_to_lengths

FACTORS = (2, 3, 4)
TAPS = 161
POOL_KERNEL, POOL_PADDING = 10, 2
KAISER_BETA = 8.6  # stopband about -85 dB, transition about 550 Hz wide at 16 kHz with 161 taps


def lowpass_filter(factor: int, taps: int = TAPS) -> torch.Tensor:
    """(taps,) float32 Kaiser-windowed sinc lowpass for resampling by 1/``factor``.

    Cutoff at the new Nyquist frequency (1 / (2 * factor) cycles per sample), normalised to unit
    DC gain (the taps sum to 1). Symmetric, so convolution and cross-correlation agree.
    """
    cutoff = 1.0 / (2 * factor)
    n = torch.arange(taps, dtype=torch.float64) - (taps - 1) / 2
    ideal = 2 * cutoff * torch.sinc(2 * cutoff * n)
    h = ideal * torch.kaiser_window(taps, periodic=False, beta=KAISER_BETA, dtype=torch.float64)
    return (h / h.sum()).float()


def learned_filter(factor: int) -> nn.Conv1d:
    """``"conv"``: a learned ``Conv1d(1, 1, 161, stride=f)`` that starts as the resampling lowpass."""
    conv = nn.Conv1d(1, 1, TAPS, stride=factor, padding=TAPS // 2)
    with torch.no_grad():
        conv.weight.copy_(lowpass_filter(factor).view(1, 1, TAPS))
        conv.bias.zero_()
    return conv


class FixedLowpass(nn.Module):
    """``"resample"``: the Kaiser-windowed sinc lowpass applied with stride f. A function of the
    factor alone, kept as a non-persistent buffer, so checkpoints need no copy of it."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor
        self.register_buffer("lowpass", lowpass_filter(factor).view(1, 1, TAPS), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.lowpass, stride=self.factor, padding=TAPS // 2)


@dataclass(frozen=True)
class Method:
    """How one method shortens the waveform: the child module (built from the factor) under the
    attribute name checkpoints know it by, and its kernel and padding for the length formula."""

    attribute: str
    build: Callable[[int], nn.Module]
    kernel: int
    padding: int


METHODS = {
    "conv": Method("conv", learned_filter, TAPS, TAPS // 2),
    "avgpool": Method("pool", lambda f: nn.AvgPool1d(POOL_KERNEL, stride=f, padding=POOL_PADDING), POOL_KERNEL,
                      POOL_PADDING),
    "resample": Method("resample", FixedLowpass, TAPS, TAPS // 2),
}


class InputDownsampler(nn.Module):
    """Shortens a padded batch of 16 kHz waveforms by ``factor`` with one of ``METHODS``
    (parameters: ``conv.weight`` and ``conv.bias`` for the learned filter, none otherwise)."""

    def __init__(self, method: str, factor: int):
        super().__init__()
        chosen = choose(METHODS, method, "input_downsample")
        if factor not in FACTORS:
            raise ValueError(f"model.input_downsample_factor={factor!r}: expected one of {FACTORS}")
        self.method, self.factor = str(method), int(factor)
        self.attribute, self.kernel, self.padding = chosen.attribute, chosen.kernel, chosen.padding
        self.add_module(chosen.attribute, chosen.build(self.factor))

    def extra_repr(self) -> str:
        return f"method={self.method!r}, factor={self.factor}"

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """(B,) input samples -> (B,) output samples (PyTorch's conv/pool length formula)."""
        return conv_output_lengths(lengths, self.kernel, self.factor, self.padding).clamp(min=0)

    def min_input_samples(self, out_samples: int) -> int:
        """The fewest input samples that give at least ``out_samples`` output samples (a bisection:
        the output length never shrinks as the input grows, and ``SEWCtc`` asks at every forward)."""
        low, high = 1, out_samples * self.factor + self.kernel  # high gives enough
        while low < high:
            middle = (low + high) // 2
            if int(self.output_lengths(torch.tensor([middle]))) >= out_samples:
                high = middle
            else:
                low = middle + 1
        return low

    def forward(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B, S) waveforms and (B, S) padding mask (True = padding, or None) -> (B, S') and (B, S')."""
        if padding_mask is not None:
            source = source.masked_fill(padding_mask, 0.0)
        x = getattr(self, self.attribute)(source.unsqueeze(1)).squeeze(1)  # (B, 1, S) -> (B, S')
        if padding_mask is None:
            return x, None
        out_lengths = self.output_lengths(padding_mask_to_lengths(padding_mask, source))
        out_mask = lengths_to_padding_mask(out_lengths, x.size(1))
        return x.masked_fill(out_mask, 0.0), out_mask


def expand_ctc_frames(logits: torch.Tensor, frames: int) -> torch.Tensor:
    """(T, B, frames * V) -> (T * frames, B, V): each encoder frame t emits output frames
    ``t * frames ... t * frames + frames - 1``, in the order of the ``frames`` blocks of V."""
    steps, bsz, width = logits.shape
    if width % frames:
        raise ValueError(f"last dimension {width} is not a multiple of frames={frames}")
    vocab = width // frames
    return logits.view(steps, bsz, frames, vocab).transpose(1, 2).reshape(steps * frames, bsz, vocab)


def expand_padding_mask(padding_mask: Optional[torch.Tensor], frames: int) -> Optional[torch.Tensor]:
    """(B, T) padding mask -> (B, T * frames), each encoder frame's flag repeated ``frames`` times."""
    if padding_mask is None:
        return None
    return padding_mask.repeat_interleave(frames, dim=1)
