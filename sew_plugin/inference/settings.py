"""Loading a CTC checkpoint for inference, and the settings a model runs at: the St-SEW operating
point (``set_operating_point``), the CIF lambda (``set_cif_lambda``), the early-exit policy
(``set_exit_policy``).

Each function raises ``ValueError`` saying what is wrong (the commands in ``sew_plugin.cli`` add the
option that carried it); none of them reads command-line arguments.
"""

import math
from pathlib import Path
from typing import Optional

import torch

from ..modules.early_exit import NBEST, make_policy
from .devices import check_device
from .precision import refuse_int8_off_cpu, set_precision


def load_for_inference(checkpoint: Path, data: Path, device: str = "cpu", threads: int = 0, command: str = "infer",
                       dtype: str = "fp32", data_named: bool = True):
    """``(model, task, normalize)``: the CTC model of ``checkpoint`` in eval mode on ``device`` in
    ``dtype`` (``precision.DTYPES``), its task (with the target dictionary of ``data``: a folder the
    user named, or with ``data_named=False`` one implied, the manifest's; ``interop.load_with_data``
    checks them), and whether the checkpoint's task normalised the audio. A
    checkpoint without a CTC head (pre-trained) is refused (``ValueError`` naming the file): its
    task has no target dictionary to decode with; ``command`` names who asks."""
    from ..checkpoint import require_ctc
    from ..interop import load_with_data
    from ..modules import keep_layer_results

    if check_device(device).type == "cpu" and dtype == "fp16":
        raise ValueError("fp16 is for GPUs: CPUs without native fp16 arithmetic emulate it (SEW-D-mid ran 4.7x "
                         "slower than in fp32 on an AVX-512 EPYC); on the CPU use bf16 or int8")
    refuse_int8_off_cpu(dtype, device)
    if threads:
        torch.set_num_threads(threads)
    model, cfg, task = load_with_data(checkpoint, data, data_named)  # a bad dictionary: a DataError naming it
    try:
        require_ctc(model, command)
    except ValueError as err:
        raise ValueError(f"{checkpoint}: {err}") from None
    keep_layer_results(model, False)  # only the last layer feeds the CTC head
    set_precision(model.to(device), dtype)
    return model, task, bool(cfg.task.get("normalize", False))


def set_operating_point(model, point: Optional[str]) -> None:
    """Fix the (S_f, S_k, S_q) of a St-SEW CTC model ('2,2,1'), or return it to sampling (None)."""
    from ..models.sew_ctc import set_operating_point as fix

    fix(model, point)


def set_cif_lambda(model, lam: Optional[float]) -> None:
    """Run a CIF CTC model at lambda ``lam`` in [0, 2) (its mean frame period grows with it)."""
    from ..models.sew_ctc import set_cif_lambda as fix

    fix(model, lam)


def _encoder(model):
    """The wav2vec 2.0-family model inside a CTC model (None for another kind of model)."""
    return getattr(getattr(model, "w2v_encoder", None), "w2v_model", None)


def require_fixed_operating_point(model) -> None:
    """Refuse a St-SEW model that samples its operating point at every forward (fine-tuned
    stochastically): its transcripts would change from call to call."""
    from ..models.sew_ctc import SAMPLED_POINT

    encoder = getattr(_encoder(model), "encoder", None)
    if hasattr(encoder, "set_operating_point") and not encoder.fixed:
        raise ValueError(SAMPLED_POINT)


def require_fixed_cif_lambda(model) -> None:
    """Refuse a CIF model fine-tuned with a sampled lambda: it needs one to run at."""
    cif = getattr(_encoder(model), "cif", None)
    if cif is not None and cif.fixed_lambda is None:
        raise ValueError("this CIF model samples lambda (none was fixed in fine-tuning): pass --cif-lambda")


def exits_of(model) -> list:
    """The layers an early-exit model can leave after, the last layer included ([] without exits)."""
    runner = getattr(model, "exit_runner", None)
    return [] if runner is None else runner.layers + [runner.encoder.num_layers]


# the setting each option is read by: (setting, its values that read it). Given to a run without
# one of those values, the option would be ignored: callers refuse it (``unread``)
READ_BY = {
    "lm": ("decoder", ("kenlm",)), "lexicon": ("decoder", ("kenlm",)), "beam": ("decoder", ("kenlm",)),
    "threshold": ("exit_policy", ("entropy", "similarity", "nbest")), "exit_layer": ("exit_policy", ("layer",)),
    "nbest": ("exit_policy", ("nbest",)),
}


def unread(given, decoder: str, exit_policy: Optional[str]) -> list:
    """The options among ``given`` (keys of ``READ_BY``: those a caller set) that a run with
    ``decoder`` and ``exit_policy`` would not read, e.g. an LM without the kenlm decoder."""
    run = {"decoder": decoder, "exit_policy": exit_policy}
    return [name for name in given if run[READ_BY[name][0]] not in READ_BY[name][1]]


def set_exit_policy(model, policy: str, threshold: Optional[float] = None, layer: Optional[int] = None,
                    nbest: int = NBEST, decoder=None) -> None:
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
