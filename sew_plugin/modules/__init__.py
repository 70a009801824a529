"""Building blocks that the models in ``sew_plugin.models`` compose."""

import numpy as np
import torch
from torch import nn


def layer_dropped(training: bool, layerdrop: float) -> bool:
    """LayerDrop: skip this layer on this step? Drawn from numpy's RNG, which fairseq seeds, as
    fairseq's wav2vec 2.0 encoder does."""
    return training and layerdrop > 0 and np.random.random() <= layerdrop


def keep_layer_results(model: nn.Module, keep: bool) -> None:
    """Whether this plugin's encoders return every layer's output in ``layer_results``.

    fairseq's wav2vec 2.0 encoder always does (probing and layer-weighting recipes read them), so
    that is the default; inference that only needs the last layer turns it off and no longer holds
    one (B, L, D) tensor per layer until the forward ends (about half of SEW-D-mid's peak
    activation memory at batch 1).
    """
    for module in model.modules():
        if hasattr(module, "keep_layer_results"):
            module.keep_layer_results = keep


def weights_key(*tensors: torch.Tensor) -> tuple:
    """Identifies the current contents of ``tensors``: storage and in-place version counters.

    An optimizer step or ``load_state_dict`` bumps the version, so a cache keyed on this is
    invalidated exactly when a weight it was computed from changes. Inference tensors (weights made
    or converted under ``torch.inference_mode``) have no version counter, so nothing tells a write
    to them: their key never matches another, and what is cached on them is rebuilt at every call.
    """
    return tuple((t.data_ptr(), object() if t.is_inference() else t._version) for t in tensors)
