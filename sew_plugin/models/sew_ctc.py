"""CTC fine-tuning of any pre-trained encoder of this plugin, or of fairseq's own wav2vec 2.0.

fairseq's ``Wav2VecCtc`` already rebuilds the pre-training model from the checkpoint's stored cfg
(``w2v_args``) through the model registry, so it builds SEW (and later this plugin's other
encoders) as readily as wav2vec 2.0, and it writes the fine-tuning overrides (dropouts, masking,
layerdrop, ``feature_grad_mult``) into that cfg before building. This class keeps that machinery,
registers it under this plugin's names (``sew_ctc``, and ``wav2vec_ctc_v2`` of the original SEW
release), fails early with the config key when ``w2v_path`` is missing, and fixes the operating
point of a St-SEW encoder for deterministic fine-tuning (``operating_point``).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc

from .registry import register_models


@dataclass
class SEWCtcConfig(Wav2Vec2CtcConfig):
    operating_point: Optional[str] = field(
        default=None,
        metadata={"help": "St-SEW encoders: fixed 'S_f,S_k,S_q' (deterministic fine-tuning); "
                  "unset: keep sampling (stochastic fine-tuning)"},
    )


class SEWCtc(Wav2VecCtc):
    """Encoder + linear CTC head (``w2v_encoder.proj``), trained with fairseq's ``ctc`` criterion.

    ``forward(source (B, S), padding_mask (B, S))`` -> ``encoder_out`` (T, B, V) logits at the
    encoder's frame rate and the (B, T) ``padding_mask``.
    """

    @classmethod
    def build_model(cls, cfg: SEWCtcConfig, task):
        if cfg.w2v_args is None and not Path(cfg.w2v_path).is_file():
            raise FileNotFoundError(f"model.w2v_path={cfg.w2v_path!r}: pre-trained checkpoint not found")
        model = super().build_model(cfg, task)
        if cfg.operating_point:
            set_operating_point(model, cfg.operating_point)
        return model


def set_operating_point(model, point: Optional[str]) -> None:
    """Fix the (S_f, S_k, S_q) of a CTC model's St-SEW encoder, or return it to sampling (None)."""
    encoder = model.w2v_encoder.w2v_model.encoder
    if not hasattr(encoder, "set_operating_point"):
        raise ValueError(f"model.operating_point applies to St-SEW encoders, not {type(encoder).__name__}")
    encoder.set_operating_point(point)


register_models(SEWCtc, SEWCtcConfig, "sew_ctc", "wav2vec_ctc_v2")
