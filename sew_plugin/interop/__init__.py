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


def load_with_data(checkpoint: Path, data: Optional[Path] = None, named: bool = True):
    """``(model, cfg, task)`` of ``checkpoint`` (``load_checkpoint``), with ``task.data`` replaced by
    ``data`` when given (the exporters' and ``sew transcribe``'s ``--data``).

    A fine-tuned checkpoint names the folder it was trained from (``task.data``), whose
    ``dict.ltr.txt`` is its target dictionary unless the checkpoint carries one itself; the original
    release's checkpoints name a folder on their training machine. A missing dictionary is a
    ``DataError`` naming it, with the hint to pass ``--data`` (this plugin's tasks raise a
    ``DataError``, fairseq's own a ``FileNotFoundError``: both become that), and so is a dictionary
    of another size than the checkpoint's output layer. A folder the user ``named`` (not one implied,
    as ``sew infer`` implies the manifest's) is also refused when it is not a folder, or when its
    dictionary's symbols differ from those the checkpoint carries and decodes with (``check_dictionary``):
    it would otherwise be ignored without a word.
    """
    from ..checkpoint import load_checkpoint
    from ..data.errors import DataError

    if data is not None and named and not Path(data).is_dir():
        raise DataError(data, "not a folder (--data names the folder of the checkpoint's dict.ltr.txt)")
    try:
        model, cfg, task = load_checkpoint(checkpoint, {"data": str(data)} if data else None)
    except RuntimeError as err:  # the output layer sized by the data folder's dictionary, not the checkpoint's
        head = re.search(r"size mismatch for [\w.]*proj\.weight: copying a param with shape torch\.Size\(\[(\d+), "
                         r"\d+\]\) from checkpoint, the shape in current model is torch\.Size\(\[(\d+),", str(err))
        if head is None:
            raise
        whose = "its dictionary" if data is not None else "the dictionary of the folder it was fine-tuned from"
        raise DataError(data if data is not None else checkpoint,
                        f"{whose} gives the CTC head {head[2]} outputs, {checkpoint}'s has {head[1]}: pass --data "
                        "with the folder of the dictionary it was fine-tuned with") from None
    except (DataError, FileNotFoundError) as err:
        found = err.path if isinstance(err, DataError) else err.filename
        missing = Path(found) if found is not None else None
        if missing is None or not missing.name.startswith("dict.") or missing.exists():
            raise
        raise DataError(missing, f"dictionary not found; pass --data FOLDER with its {missing.name}") from None
    if data is not None and named:
        labels = cfg.task.get("labels", None) or "ltr"
        check_dictionary(Path(data) / f"dict.{labels}.txt", getattr(task, "target_dictionary", None), checkpoint)
    return model, cfg, task


def check_dictionary(path: Path, dictionary, checkpoint: Path) -> None:
    """A named data folder's dictionary, where it has one, refused (``DataError`` naming it) when its
    symbols differ from those of the ``dictionary`` the model decodes with: a checkpoint that carries
    its own dictionary never reads the folder's."""
    from ..data.errors import DataError

    if dictionary is None or not path.is_file():
        return
    from fairseq.data import Dictionary

    try:
        symbols = Dictionary.load(str(path)).symbols
    except (ValueError, RuntimeError) as err:
        raise DataError(path, f"not a fairseq dictionary ({err})") from None
    if symbols != dictionary.symbols:
        first = next((i for i, (a, b) in enumerate(zip(symbols, dictionary.symbols)) if a != b),
                     min(len(symbols), len(dictionary.symbols)))
        raise DataError(path, f"its symbols differ from the dictionary {checkpoint} decodes with ({len(symbols)} vs "
                        f"{len(dictionary.symbols)} symbols, the first difference at index {first}): the checkpoint's "
                        "is what its output layer was trained with; give the folder it was fine-tuned from, or none")
