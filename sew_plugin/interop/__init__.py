"""Conversions between this plugin's checkpoints and other implementations."""

import torch


def with_blank_weight(logits: torch.Tensor, weight: float, mode: str = "add") -> torch.Tensor:
    """(..., V) CTC logits with fairseq's ``model.blank_weight`` on the blank (index 0), as
    ``Wav2VecCtc.get_logits`` applies it at decoding; out of place and without ``get_logits``'s
    in-place masking of padded frames, so an exported model can bake it in and a check can compare
    against it. Written with a one-hot so it traces into ONNX as plain arithmetic."""
    if not weight:
        return logits
    blank = (torch.arange(logits.size(-1), device=logits.device) == 0).to(logits.dtype)
    if mode == "add":
        return logits + weight * blank
    if mode == "set":
        return logits * (1 - blank) + weight * blank
    raise ValueError(f"model.blank_mode={mode!r}: fairseq knows 'add' and 'set'")
