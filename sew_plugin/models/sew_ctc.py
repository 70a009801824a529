"""CTC fine-tuning of any pre-trained encoder of this plugin, or of fairseq's own wav2vec 2.0.

fairseq's ``Wav2VecCtc`` already rebuilds the pre-training model from the checkpoint's stored cfg
(``w2v_args``) through the model registry, so it builds SEW (and later this plugin's other
encoders) as readily as wav2vec 2.0, and it writes the fine-tuning overrides (dropouts, masking,
layerdrop, ``feature_grad_mult``) into that cfg before building. This class keeps that machinery,
registers it under this plugin's names (``sew_ctc``, and ``wav2vec_ctc_v2`` of the original SEW
release), fails early with the config key when ``w2v_path`` is missing, fixes the operating
point of a St-SEW encoder for deterministic fine-tuning (``operating_point``), and adds early-exit
CTC heads after chosen layers (``exit_layers``; ``sew_plugin.modules.early_exit``).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc
from torch import nn

from ..modules.early_exit import ExitRunner, exit_head, parse_exit_layers, parse_exit_weights
from ..modules.layerwise import make_steppable
from .registry import register_models

EXIT_TRAINING = ("joint", "exits_only")


@dataclass
class SEWCtcConfig(Wav2Vec2CtcConfig):
    operating_point: Optional[str] = field(
        default=None,
        metadata={"help": "St-SEW encoders: fixed 'S_f,S_k,S_q' (deterministic fine-tuning); "
                  "unset: keep sampling (stochastic fine-tuning)"},
    )
    exit_layers: str = field(
        default="",
        metadata={"help": "early exits: CTC heads after these layers (1-based, comma list, e.g. '2,4'); "
                  "the last layer keeps the final head"},
    )
    exit_head: str = field(default="linear", metadata={"help": "exit head type: linear or mlp"})
    exit_loss_weights: str = field(
        default="", metadata={"help": "loss weight per exit, then the final head (default: all 1)"}
    )
    exit_training: str = field(
        default="joint",
        metadata={"help": "joint: backbone and every head train together; exits_only: the second step of "
                  "two-step training, backbone and final head frozen (start them from exit_init)"},
    )
    exit_init: Optional[str] = field(
        default=None,
        metadata={"help": "fine-tuned CTC checkpoint (same backbone, no exits) whose weights start this model"},
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
        if str(cfg.exit_layers or "").strip():
            model.add_exits(cfg, len(task.target_dictionary))
        return model

    def add_exits(self, cfg: SEWCtcConfig, vocab: int) -> None:
        """Exit heads after ``cfg.exit_layers``, trained as ``cfg.exit_training`` says."""
        encoder = make_steppable(self.w2v_encoder.w2v_model.encoder)
        self.exit_layers = parse_exit_layers(cfg.exit_layers, encoder.num_layers)
        self.exit_weights = parse_exit_weights(cfg.exit_loss_weights, len(self.exit_layers) + 1)
        if cfg.exit_training not in EXIT_TRAINING:
            raise ValueError(f"model.exit_training={cfg.exit_training!r} must be one of {EXIT_TRAINING}")
        dim = self.w2v_encoder.proj.in_features
        self.exit_heads = nn.ModuleDict({str(i): exit_head(dim, vocab, cfg.exit_head) for i in self.exit_layers})
        self.exit_runner = ExitRunner(encoder, self.exit_heads, self.exit_layers, self.w2v_encoder.final_dropout)
        encoder.layer_hook = self.exit_runner
        if cfg.exit_init:
            self.load_backbone(cfg.exit_init)
        if cfg.exit_training == "exits_only":
            for name, param in self.named_parameters():
                param.requires_grad = name.startswith("exit_heads.")

    def load_backbone(self, path: str) -> None:
        """Every weight but the exit heads from a fine-tuned CTC checkpoint (refusing a mismatch)."""
        from ..checkpoint import read_weights

        if not Path(path).is_file():
            raise FileNotFoundError(f"model.exit_init={path!r}: fine-tuned checkpoint not found")
        state = read_weights(path)
        own = {k for k in self.state_dict() if not k.startswith("exit_heads.")}
        if set(state) != own:
            raise ValueError(f"model.exit_init={path!r} does not match this model: missing "
                             f"{sorted(own - set(state))[:5]}, unexpected {sorted(set(state) - own)[:5]}")
        self.load_state_dict(state, strict=False)

    def forward(self, **kwargs):
        """fairseq's CTC forward; with exits, also ``exit_logits`` {layer: (T, B, V)} (training, or no
        policy) or, under an exit policy, the logits of each utterance's exit in ``encoder_out`` and
        its exit layer in ``exit_layer`` (B,)."""
        runner = getattr(self, "exit_runner", None)
        out = super().forward(**kwargs)
        if runner is None:
            return out
        if runner.policy is None:
            out["exit_logits"] = dict(runner.logits)
            return out
        final = out["encoder_out"]  # (T, B', V) for the utterances that reached the last layer
        batch = runner.exit_layer.numel()
        logits = final.new_zeros(final.size(0), batch, final.size(-1))
        logits[:, runner.remaining_rows] = final
        for layer, rows in runner.rows.items():
            logits[:, rows] = runner.logits[layer]
        out["encoder_out"], out["exit_layer"] = logits, runner.exit_layer.clone()
        return out


def set_operating_point(model, point: Optional[str]) -> None:
    """Fix the (S_f, S_k, S_q) of a CTC model's St-SEW encoder, or return it to sampling (None)."""
    encoder = model.w2v_encoder.w2v_model.encoder
    if not hasattr(encoder, "set_operating_point"):
        raise ValueError(f"model.operating_point applies to St-SEW encoders, not {type(encoder).__name__}")
    encoder.set_operating_point(point)


register_models(SEWCtc, SEWCtcConfig, "sew_ctc", "wav2vec_ctc_v2")
