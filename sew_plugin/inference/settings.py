"""Loading a CTC checkpoint for inference, and the settings a model runs at: the St-SEW operating
point, the CIF lambda, the early-exit policy.

Each function raises ``ValueError`` saying what is wrong (the commands in ``sew_plugin.cli`` add the
option that carried it); none of them reads command-line arguments.
"""

import math
from pathlib import Path
from typing import Optional

import torch

from ..modules.early_exit import make_policy


def load_for_inference(checkpoint: Path, data: Path, device: str = "cpu", threads: int = 0, command: str = "infer"):
    """``(model, task, normalize)``: the CTC model of ``checkpoint`` in eval mode on ``device``, its
    task (with the target dictionary of ``data``, the folder of the manifest to transcribe), and
    whether the checkpoint's task normalised the audio. A checkpoint without a CTC head
    (pre-trained) is refused (``ValueError`` naming the file): its task has no target dictionary
    to decode with; ``command`` names who asks."""
    from ..checkpoint import load_checkpoint, require_ctc
    from ..modules import keep_layer_results

    if threads:
        torch.set_num_threads(threads)
    model, cfg, task = load_checkpoint(checkpoint, {"data": str(data)})
    try:
        require_ctc(model, command)
    except ValueError as err:
        raise ValueError(f"{checkpoint}: {err}") from None
    keep_layer_results(model, False)  # only the last layer feeds the CTC head
    model.to(device)
    return model, task, bool(cfg.task.get("normalize", False))


def require_fixed_operating_point(model) -> None:
    """Refuse a St-SEW model that samples its operating point at every forward (fine-tuned
    stochastically): its transcripts would change from call to call."""
    from ..models.sew_ctc import SAMPLED_POINT, samples_operating_point

    if samples_operating_point(model):
        raise ValueError(SAMPLED_POINT)


def require_fixed_cif_lambda(model) -> None:
    """Refuse a CIF model fine-tuned with a sampled lambda: it needs one to run at."""
    cif = getattr(model.w2v_encoder.w2v_model, "cif", None)
    if cif is not None and cif.fixed_lambda is None:
        raise ValueError("this CIF model samples lambda (none was fixed in fine-tuning): pass --cif-lambda")


def exits_of(model) -> list:
    """The layers an early-exit model can leave after, the last layer included ([] without exits)."""
    runner = getattr(model, "exit_runner", None)
    return [] if runner is None else runner.layers + [runner.encoder.num_layers]


def set_exit_policy(model, policy: str, threshold: Optional[float] = None, layer: Optional[int] = None,
                    nbest: int = 300, decoder=None) -> None:
    """Put an early-exit model under ``policy`` (``layer`` for the fixed exit, else ``threshold``;
    ``decoder`` is the beam decoder of the N-best policy)."""
    runner = getattr(model, "exit_runner", None)
    if runner is None:
        raise ValueError("an exit policy needs a model fine-tuned with exits (model.exit_layers)")
    if policy == "layer" and layer not in exits_of(model):
        raise ValueError(f"the exit layer must be one of the model's exits {exits_of(model)}, got {layer}")
    if policy != "layer" and threshold is None:
        raise ValueError(f"the exit policy {policy} needs a threshold")
    runner.policy = make_policy(policy, threshold if threshold is not None else math.inf, layer, nbest, decoder)
