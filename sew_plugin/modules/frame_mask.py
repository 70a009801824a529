"""Exact 20 ms padding masks for padded batches that hold waveforms without a single frame.

fairseq's ``Wav2Vec2Model.forward`` turns the (B, S) sample mask into the (B, T) frame mask by
marking frame ``output_length - 1`` of each row and filling everything before it as valid. That
cannot express a row with no frame: a row shorter than the feature extractor's receptive field
(400 samples for WFE-O and WFE-C), an all-padding row included, has an output length of 0 (or -1
from fairseq's float formula at length 0) and comes out with every frame (or all but the last)
marked valid, so the transformer attends to its zero padding as if it were speech and the caller
gets a mask that says so.

``exact_frame_mask_forward`` runs that forward unchanged whenever every row has at least one frame
(the usual case, bit-identical); otherwise it hands the encoder the mask from integer arithmetic
(``feature_extractor.output_frames``: 0 frames below the receptive field) through the forward
pre-hook the model installed on its encoder once (``install_exact_frame_masks``), and returns that
mask in the result. Such a row is then padding everywhere: the
squeezed encoders' upsampler gives zeros there, and at squeeze factor 1 (wav2vec 2.0's encoder) its
frames are finite values under a fully True padding mask, as padded frames are in fairseq.
The time masking of pre-training (``apply_mask``) still sees fairseq's mask; it only decides which
frames of such a row get the mask embedding, which the encoder then ignores.
"""

from contextvars import ContextVar
from typing import Callable, Optional

import torch

from .feature_extractor import output_frames
from .squeeze import lengths_to_padding_mask


def frames_per_row(model, padding_mask: torch.Tensor) -> Optional[torch.Tensor]:
    """(B,) exact 20 ms frames of each row of a (B, S) sample mask, or None if every row has one."""
    extractor = model.feature_extractor
    samples = (~padding_mask).long().sum(-1)
    if bool((samples >= extractor.min_samples).all()):
        return None
    return output_frames(samples, extractor.layers)


_EXACT_FRAMES: ContextVar[Optional[torch.Tensor]] = ContextVar("sew_plugin_exact_frames", default=None)


def _exact_mask(encoder, args, kwargs):
    """The encoder's forward pre-hook: the exact mask in place of fairseq's while a forward of
    ``exact_frame_mask_forward`` needs one (a context variable: no module attribute is written)."""
    frames = _EXACT_FRAMES.get()
    if frames is None:
        return None
    x = args[0] if args else kwargs["x"]
    mask = lengths_to_padding_mask(frames.to(x.device), x.size(1))
    if len(args) > 1:
        return (args[0], mask, *args[2:]), kwargs
    return args, {**kwargs, "padding_mask": mask}


def install_exact_frame_masks(model) -> None:
    """Once, at construction: let ``model.encoder`` take the exact mask (see ``exact_frame_mask_forward``)."""
    model.encoder.register_forward_pre_hook(_exact_mask, with_kwargs=True)


def exact_frame_mask_forward(
    model, forward: Callable, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, *args, **kwargs
):
    """``forward(source, padding_mask, *args, **kwargs)`` (fairseq's ``Wav2Vec2Model.forward`` of
    ``model``, whose encoder has ``install_exact_frame_masks``), with the exact frame mask when some
    row has no 20 ms frame (see the module doc)."""
    frames = None
    if padding_mask is not None and padding_mask.any():
        frames = frames_per_row(model, padding_mask)
    if frames is None:
        return forward(source, padding_mask, *args, **kwargs)
    token = _EXACT_FRAMES.set(frames)
    try:
        result = forward(source, padding_mask, *args, **kwargs)
    finally:
        _EXACT_FRAMES.reset(token)
    if isinstance(result, dict) and result.get("padding_mask") is not None:
        result["padding_mask"] = lengths_to_padding_mask(frames.to(source.device), result["padding_mask"].size(1))
    return result
