"""Conversions between this plugin's checkpoints and other implementations, and what the exporters share."""

import re
from pathlib import Path
from typing import Optional

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


def load_with_data(checkpoint: Path, data: Optional[Path] = None):
    """``(model, cfg, task)`` of ``checkpoint`` (``load_checkpoint``), with ``task.data`` replaced by
    ``data`` when given (the exporters' ``--data``).

    A fine-tuned checkpoint names the folder it was trained from (``task.data``), whose
    ``dict.ltr.txt`` is its target dictionary unless the checkpoint carries one itself; the original
    release's checkpoints name a folder on their training machine. A missing dictionary is a
    ``DataError`` naming it, with the hint to pass ``--data`` (this plugin's tasks raise a
    ``DataError``, fairseq's own a ``FileNotFoundError``: both become that).
    """
    from ..checkpoint import load_checkpoint
    from ..data.errors import DataError

    try:
        return load_checkpoint(checkpoint, {"data": str(data)} if data else None)
    except RuntimeError as err:  # the output layer sized by the data folder's dictionary, not the checkpoint's
        head = re.search(r"size mismatch for [\w.]*proj\.weight: copying a param with shape torch\.Size\(\[(\d+), "
                         r"\d+\]\) from checkpoint, the shape in current model is torch\.Size\(\[(\d+),", str(err))
        if data is None or head is None:
            raise
        raise DataError(data, f"its dictionary gives the CTC head {head[2]} outputs, {checkpoint}'s has {head[1]}: "
                        "give the folder the checkpoint was fine-tuned from (its dict.ltr.txt), or none") from None
    except (DataError, FileNotFoundError) as err:
        found = err.path if isinstance(err, DataError) else err.filename
        missing = Path(found) if found is not None else None
        if missing is None or not missing.name.startswith("dict.") or missing.exists():
            raise
        raise DataError(missing, f"dictionary not found; pass --data FOLDER with its {missing.name}") from None
