"""Loading fairseq checkpoints with torch's weights-only unpickler.

torch >= 2.6 loads weights-only by default, and fairseq pickles a few of its own objects into
fine-tuned checkpoints (the target ``Dictionary`` in the task state). Rather than switching the
safe loader off (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, which lets a checkpoint run arbitrary code),
the exact classes fairseq stores are allow-listed for the duration of the load.
"""

import argparse
import contextlib
import io
import warnings
from pathlib import Path
from typing import Optional

import torch

from .data.errors import DataError

# What fairseq 0.12 puts into a checkpoint besides tensors and plain containers:
# the task's target dictionary (CTC fine-tuning) and, in argparse-era checkpoints, a Namespace.
def fairseq_safe_globals():
    from fairseq.data.dictionary import Dictionary

    return [Dictionary, argparse.Namespace]


def read_weights(path: Path) -> dict:
    """The ``model`` state dict of a fairseq checkpoint, through the same allow-listed unpickler."""
    with torch.serialization.safe_globals(fairseq_safe_globals()):
        return torch.load(path, map_location="cpu")["model"]


def load_checkpoint(path: Path, arg_overrides: Optional[dict] = None, quiet: bool = True):
    """``(model, cfg, task)`` of a checkpoint, loaded in eval mode on the CPU.

    Registers this plugin's models first, so checkpoints of ``sew``, ``sew_ctc`` and their original
    release names resolve even when ``common.user_dir`` was another path on the training machine.
    """
    import sew_plugin.models  # noqa: F401
    from fairseq import checkpoint_utils

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    overrides = dict(arg_overrides or {})
    overrides.setdefault("user_dir", None)  # the training machine's path; this plugin is imported above
    # fairseq prints the whole model while building a fine-tuned encoder; keep stdout for results
    silence = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    with torch.serialization.safe_globals(fairseq_safe_globals()), silence, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides=overrides)
    return models[0].eval(), cfg, task
