"""GroupNorm over each utterance's own frames: batch-invariant features for the GroupNorm front end.

The papers' base models, wav2vec 2.0 base and the original SEW release use fairseq's
``extractor_mode: default``: the first convolution's output is normalised per channel over time
(``Fp32GroupNorm``, one group per channel) over the whole padded length of the batch, so a short
utterance padded to a long one is normalised together with the padding's frames, and its features
depend on what it is batched with (SEW-tiny, 2 s alone vs padded to 4 s: a max abs difference of
4.25, 83% of the largest feature).

``MaskedGroupNorm`` takes each row's per-channel mean and (biased) variance over that row's valid
frames only and leaves its padded frames at zero. A row's valid frames are the first convolution's
``floor((S - k) / s) + 1`` for its S valid samples. Alone (no padding, or no lengths known) it is
fairseq's ``Fp32GroupNorm`` exactly, so every checkpoint keeps its function for single utterances.

Why this one layer is enough: the later convolutions have no padding, so output frame t of a layer
with kernel k and stride s reads input frames t * s ... t * s + k - 1, and a valid output frame
(t < floor((L - k) / s) + 1 for L valid input frames, i.e. t * s <= L - k) reads up to frame
t * s + k - 1 <= L - 1: valid input only. Every other norm of the extractor is per frame
(LayerNorm). So with this layer's statistics masked, every valid frame of every layer is what the
utterance gives alone.

fairseq's ``Wav2Vec2Model.forward`` hands the extractor only the waveform; the rows' valid samples
reach the norm through ``valid_samples(padding_mask)``, a context variable opened by the models'
forwards (``SEWModel``, ``SEWCtc``) and the ONNX graph: no module attribute is written. Which norm a
model uses is a setting (``mask_feature_norm``): fairseq's statistics in training unless
``model.masked_feature_norm``, the masked ones wherever a checkpoint is loaded for inference.
"""

import contextlib
from contextvars import ContextVar
from typing import Iterator, Optional, Tuple

import torch
from fairseq.modules import Fp32GroupNorm

from .convolution import convolve
from .squeeze import conv_output_lengths

_SAMPLES: ContextVar[Optional[torch.Tensor]] = ContextVar("sew_plugin_valid_samples", default=None)
_STATISTICS: ContextVar[Optional[Tuple[torch.Tensor, torch.Tensor]]] = ContextVar("sew_plugin_norm_statistics",
                                                                                  default=None)


@contextlib.contextmanager
def valid_samples(padding_mask: Optional[torch.Tensor] = None, samples: Optional[torch.Tensor] = None) -> Iterator:
    """The (B,) valid samples of the forward inside, from its (B, S) waveform padding mask (True at
    padding) or given as ``samples``; nothing is known without either."""
    if samples is None and padding_mask is not None:
        samples = (~padding_mask).long().sum(-1)
    token = _SAMPLES.set(samples)
    try:
        yield
    finally:
        _SAMPLES.reset(token)


@contextlib.contextmanager
def rows(start: int, stop: int) -> Iterator:
    """The valid samples and given statistics (``given_statistics``) of rows ``start:stop`` only, for
    an extractor that runs a batch in groups."""
    samples, given = _SAMPLES.get(), _STATISTICS.get()
    token = _SAMPLES.set(None if samples is None else samples[start:stop])
    given_token = _STATISTICS.set(None if given is None else tuple(t[start:stop] for t in given))
    try:
        yield
    finally:
        _STATISTICS.reset(given_token)
        _SAMPLES.reset(token)


def check_given_rows(batch: int) -> None:
    """Refuse given statistics (``given_statistics``) whose rows are not the batch's, before an
    extractor splits the batch into groups (each group's slice could match its group by chance)."""
    given = _STATISTICS.get()
    if given is not None and given[0].size(0) != batch:
        raise ValueError(f"given statistics of {given[0].size(0)} rows for a batch of {batch}")


@contextlib.contextmanager
def given_statistics(mean: torch.Tensor, var: torch.Tensor) -> Iterator:
    """Normalise each row of the forward inside with the given (B, C) per-channel mean and biased
    variance instead of its own: windows cut from one long recording get the statistics of the
    whole recording (``recording_statistics``), so each computes what the whole would."""
    token = _STATISTICS.set((mean, var))
    try:
        yield
    finally:
        _STATISTICS.reset(token)


def first_norm(model) -> Optional[Tuple[torch.nn.Conv1d, "MaskedGroupNorm"]]:
    """The first convolution of ``model``'s GroupNorm feature extractor and its norm (None without one)."""
    from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel

    for module in model.modules():
        if isinstance(module, ConvFeatureExtractionModel):
            block = module.conv_layers[0]
            if len(block) > 2 and isinstance(block[2], MaskedGroupNorm):
                return block[0], block[2]
    return None


@torch.no_grad()
def recording_statistics(model, wav: torch.Tensor, chunk: int = 16000 * 30) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(C,) per-channel mean and biased variance of the first convolution's output over all of the
    (S,) waveform ``wav`` (downsampled first, whole, by a model with input downsampling, as its
    forward does), what the GroupNorm front end computes for it whole; None for a model without
    one. The convolution runs over ``chunk`` samples at a time (overlapping by its kernel minus its
    stride, starting on its stride): beyond the waveform (and its downsampled copy), memory stays
    bounded however long the recording."""
    found = first_norm(model)
    if found is None:
        return None
    conv, _ = found
    downsampler = getattr(model, "input_downsampler", None)
    if downsampler is not None:  # the front end sees the downsampled waveform (SEWCtc.forward), whole
        wav = downsampler(wav[None], None)[0][0]
    k, s = conv.kernel_size[0], conv.stride[0]
    chunk = max(chunk - chunk % s, s)
    total = torch.zeros(conv.out_channels, dtype=torch.float64)
    squares = torch.zeros_like(total)
    frames = 0
    weight = next(conv.parameters())
    for start in range(0, max(wav.numel() - k, 0) + 1, chunk):
        x = convolve(conv, wav[start : start + chunk + k - s].to(weight)[None, None]).double()[0]  # (C, T)
        total += x.sum(-1).cpu()
        squares += x.pow(2).sum(-1).cpu()
        frames += x.size(-1)
    mean = total / max(frames, 1)
    return mean.float(), (squares / max(frames, 1) - mean.pow(2)).clamp(min=0).float()


class MaskedGroupNorm(Fp32GroupNorm):
    """fairseq's per-channel ``Fp32GroupNorm`` of the first convolution's (B, C, T) output, with
    statistics over each row's valid frames when ``masked`` and the forward's valid samples are known.
    ``kernel`` and ``stride`` are that convolution's. Parameters: fairseq's (``weight``, ``bias``)."""

    masked = True
    kernel = stride = 1

    @classmethod
    def convert(cls, norm: Fp32GroupNorm, conv: torch.nn.Conv1d) -> "MaskedGroupNorm":
        """fairseq's norm after ``conv``, made a ``MaskedGroupNorm`` in place (same parameters)."""
        if norm.num_groups != norm.num_channels:
            raise TypeError(f"a masked GroupNorm needs one group per channel, got {norm.num_groups} groups of "
                            f"{norm.num_channels} channels")
        if not isinstance(norm, cls):
            norm.__class__ = cls
        norm.kernel, norm.stride = conv.kernel_size[0], conv.stride[0]
        return norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        given = _STATISTICS.get()
        if given is not None:
            check_given_rows(x.size(0))  # never fall back to the window's own statistics unseen
            return self.with_statistics(x, *given)
        samples = _SAMPLES.get() if self.masked else None
        if samples is None or samples.numel() != x.size(0):
            return super().forward(x)
        frames = conv_output_lengths(samples.to(x.device), self.kernel, self.stride).clamp(0, x.size(-1))  # (B,)
        if not torch.jit.is_tracing():
            # each row through fairseq's norm on its own valid frames: exactly what it computes alone
            if bool((frames == x.size(-1)).all()):
                return super().forward(x)
            out = torch.zeros_like(x)
            for row, n in enumerate(frames.tolist()):
                if n:
                    out[row, :, :n] = super().forward(x[row : row + 1, :, :n])[0]
            return out
        # traced: the same statistics for every row at once, as tensor operations a graph keeps
        valid = (torch.arange(x.size(-1), device=x.device)[None, :] < frames[:, None]).unsqueeze(1).float()
        xf = x.float()
        count = valid.sum(-1, keepdim=True).clamp(min=1)  # (B, 1, 1)
        mean = (xf * valid).sum(-1, keepdim=True) / count  # (B, C, 1)
        var = ((xf - mean) * valid).pow(2).sum(-1, keepdim=True) / count
        y = (xf - mean) * torch.rsqrt(var + self.eps) * self.weight.float()[:, None] + self.bias.float()[:, None]
        return (y * valid).type_as(x)

    def with_statistics(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """(B, C, T) normalised with the (B, C) ``mean`` and ``var``; padded frames (when the valid
        samples are known) left at zero, as the masked statistics leave them."""
        mean, var = mean.to(x.device, torch.float32)[:, :, None], var.to(x.device, torch.float32)[:, :, None]
        y = (x.float() - mean) * torch.rsqrt(var + self.eps) * self.weight.float()[:, None] + self.bias.float()[:, None]
        samples = _SAMPLES.get()
        if samples is not None and samples.numel() == x.size(0):
            frames = conv_output_lengths(samples.to(x.device), self.kernel, self.stride)
            y = y * (torch.arange(x.size(-1), device=x.device)[None, :] < frames[:, None]).unsqueeze(1)
        return y.type_as(x)


_HOOK_TOKENS: ContextVar[tuple] = ContextVar("sew_plugin_valid_samples_hooks", default=())


def _enter_forward(model, args, kwargs) -> None:
    """A forward pre-hook for models whose own forward does not open ``valid_samples`` (fairseq's
    ``Wav2VecCtc``, called as ``model(source=..., padding_mask=...)``)."""
    mask = kwargs.get("padding_mask", args[1] if len(args) > 1 else None)
    token = _SAMPLES.set(None if mask is None else (~mask).long().sum(-1))
    _HOOK_TOKENS.set(_HOOK_TOKENS.get() + (token,))


def _leave_forward(model, args, kwargs, output) -> None:
    tokens = _HOOK_TOKENS.get()
    _SAMPLES.reset(tokens[-1])
    _HOOK_TOKENS.set(tokens[:-1])


def mask_feature_norm(model, on: bool = True) -> int:
    """Use (``on``) or stop using the masked statistics in every GroupNorm feature extractor of
    ``model`` (this plugin's and fairseq's ``ConvFeatureExtractionModel``); the number of norms set.

    A model whose forward does not say its rows' valid samples itself (fairseq's ``wav2vec_ctc``)
    gets a pair of forward hooks that do, installed once."""
    from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel

    count = 0
    for module in model.modules():
        if not isinstance(module, ConvFeatureExtractionModel):
            continue
        for block in module.conv_layers:
            if len(block) > 2 and isinstance(block[2], Fp32GroupNorm):
                MaskedGroupNorm.convert(block[2], block[0]).masked = on
                count += 1
    if count and on and not getattr(model, "opens_valid_samples", False) and not hasattr(model, "_valid_samples_hooks"):
        model._valid_samples_hooks = (model.register_forward_pre_hook(_enter_forward, with_kwargs=True),
                                      model.register_forward_hook(_leave_forward, with_kwargs=True, always_call=True))
    return count
