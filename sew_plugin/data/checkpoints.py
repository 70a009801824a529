"""Reading checkpoint files safely: whole files only, and never code hidden in a pickle.

- **Cut short.** A checkpoint whose write or copy was killed part-way (or hit a full disk) is
  refused by name (``verify_checkpoint``) before torch's reader fails deep inside on it.
- **Untrusted.** torch >= 2.6 unpickles weights-only by default, and fairseq pickles a few of its own
  objects into checkpoints (the target ``Dictionary`` of CTC fine-tuning, an argparse ``Namespace``
  in old ones). Rather than switching the safe unpickler off (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``,
  which lets a checkpoint run arbitrary code), exactly those classes are added to torch's allow-list
  (``allow_fairseq_objects``, run when the plugin's models are imported, so fairseq's own loads in
  ``fairseq-hydra-train`` resume fine-tuned checkpoints too). Anything else in a pickle is refused
  as a ``DataError`` naming the file and the object (``refusing_unsafe``).

A leaf: it imports nothing of this plugin but its errors, so models and commands alike read weights
through it (building a model from a checkpoint is ``sew_plugin.checkpoint.load_checkpoint``).
"""

import argparse
import contextlib
import pickle
import re
import zipfile
from pathlib import Path

import torch

from .errors import DataError


def allow_fairseq_objects() -> None:
    """Add the classes fairseq 0.12 pickles into checkpoints to torch's weights-only allow-list."""
    from fairseq.data.dictionary import Dictionary

    torch.serialization.add_safe_globals([Dictionary, argparse.Namespace])


def verify_checkpoint(path: Path) -> Path:
    """``path`` if it is a whole checkpoint file; a ``DataError`` naming it otherwise.

    torch writes a checkpoint as a zip archive whose directory comes last, so a file cut short has
    none: reading that directory (not the tensors) tells a truncated file from a whole one at once.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        zipfile.ZipFile(path).close()
    except zipfile.BadZipFile:
        raise DataError(path, f"checkpoint is truncated or corrupt ({path.stat().st_size} bytes, no archive "
                              f"directory at its end): it was cut short while being written or copied") from None
    return path


@contextlib.contextmanager
def refusing_unsafe(path: Path):
    """Turn torch's refusal of a pickled object outside the allow-list into a ``DataError`` naming
    the file and the object."""
    try:
        yield
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = found.group(1) if found else str(err).splitlines()[0]
        raise DataError(path, f"refused: the checkpoint holds a Python object ({what}) outside the allow-list "
                              f"of what fairseq stores; unpickling it could run code") from None


def load_state(path: Path, mmap: bool = False) -> dict:
    """A whole, safe checkpoint's contents (``mmap``: tensors left on disk until read)."""
    allow_fairseq_objects()
    with refusing_unsafe(path):
        return torch.load(verify_checkpoint(path), map_location="cpu", mmap=mmap, weights_only=True)


def read_weights(path: Path) -> dict:
    """The ``model`` state dict of a fairseq checkpoint."""
    return load_state(path)["model"]
