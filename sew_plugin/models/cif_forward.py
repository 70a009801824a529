"""wav2vec 2.0's forward with CIF compression between the front end and the context network.

Chen et al. 2023 (once-for-all compression): alpha is predicted on the normalised CNN features, lambda
modifies it, and CIF integrates the features into fewer frames. Everything after that is wav2vec
2.0 at the compressed rate, built from fairseq's own pieces (``apply_mask``, the quantizer,
``project_q``, ``sample_negatives``, ``final_proj``, ``compute_preds``): the transformer sees the
compressed frames, and the contrastive targets are the same compressed frames (unmasked), so the
context network learns to predict compressed targets.

fairseq's ``Wav2Vec2Model.forward`` cannot be reused as it is: it rebuilds the padding mask from
the convolution's length formula (and drops it when the waveforms are unpadded), while compressed
utterances have lengths of their own.
"""

from typing import Optional

import torch
from fairseq.modules import GradMultiply

from ..modules.side_outputs import report
from ..modules.squeeze import lengths_to_padding_mask


def front_end(model, source: torch.Tensor):
    """The convolutional features (B, C, T) with fairseq's ``feature_grad_mult`` semantics."""
    if model.feature_grad_mult > 0:
        features = model.feature_extractor(source)
        return GradMultiply.apply(features, model.feature_grad_mult) if model.feature_grad_mult != 1.0 else features
    with torch.no_grad():
        return model.feature_extractor(source)


def compressed_forward(
    model,
    source: torch.Tensor,
    padding_mask: Optional[torch.Tensor] = None,
    mask: bool = True,
    features_only: bool = False,
    layer: Optional[int] = None,
    mask_indices=None,
    mask_channel_indices=None,
    padding_count=None,
    corpus_key=None,
    cif_boundaries: Optional[torch.Tensor] = None,
):
    """``Wav2Vec2Model.forward`` of a model with ``model.cif``; same arguments and result keys, plus
    the ``CifResult`` reported as ``cif`` to an open ``collecting()`` scope, and ``cif_loss`` (rate or segment-guidance loss, an extra loss), ``cif_lambda`` and ``frame_period``
    (ms) for logging. ``padding_mask`` in the result is the compressed frames' (never None).

    ``cif_boundaries`` (B, K): segment end frames at 20 ms, padded with -1 (see ``guidance_loss``).
    """
    features = front_end(model, source)
    features_pen = features.float().pow(2).mean()
    features = model.layer_norm(features.transpose(1, 2))  # (B, T, C)
    frame_mask = None
    if padding_mask is not None:
        frames = model.output_lengths((~padding_mask).long().sum(-1))
        frame_mask = lengths_to_padding_mask(frames, features.size(1))
    # wav2vec 2.0 draws negatives from other masked frames: keep two per utterance
    compressed = model.cif(features, frame_mask, min_frames=1 if features_only else 2)
    report("cif", compressed)  # for SEWCtc's durations and the frame period (sew_plugin.modules.side_outputs)
    features, padding_mask = compressed.x, compressed.padding_mask
    unmasked_features = features.clone()  # the targets: compressed with the same alpha
    if model.post_extract_proj is not None:
        features = model.post_extract_proj(features)
    features = model.dropout_input(features)
    unmasked_features = model.dropout_features(unmasked_features)

    if mask:
        x, mask_indices = model.apply_mask(features, padding_mask, mask_indices=mask_indices,
                                           mask_channel_indices=mask_channel_indices)
        y = unmasked_features[mask_indices].view(unmasked_features.size(0), -1, unmasked_features.size(-1))
    else:
        x, y, mask_indices = features, unmasked_features, None

    x, layer_results = model.encoder(x, padding_mask=padding_mask, layer=layer, corpus_key=corpus_key)
    if features_only:
        return {"x": x, "padding_mask": padding_mask, "features": unmasked_features, "layer_results": layer_results}

    result = {"padding_mask": padding_mask, "features_pen": features_pen,
              "cif_loss": model.cif.loss(compressed, cif_boundaries),
              "cif_lambda": compressed.lam, "frame_period": compressed.frame_period_ms}
    if model.quantizer:
        q = model.quantizer(y, produce_targets=False)
        y = q["x"]
        result.update(prob_perplexity=q["prob_perplexity"], code_perplexity=q["code_perplexity"],
                      num_vars=q["num_vars"], temp=q["temp"])
    y = model.project_q(y)
    negs, _ = model.sample_negatives(y, y.size(1), padding_count=padding_count)
    x = x[mask_indices].view(x.size(0), -1, x.size(-1))
    if model.target_glu:
        y, negs = model.target_glu(y), model.target_glu(negs)
    result["x"] = model.compute_preds(model.final_proj(x), y, negs)
    return result
