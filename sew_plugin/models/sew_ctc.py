"""CTC fine-tuning of any pre-trained encoder of this plugin, or of fairseq's own wav2vec 2.0.

fairseq's ``Wav2VecCtc`` already rebuilds the pre-training model from the checkpoint's stored cfg
(``w2v_args``) through the model registry, so it builds SEW (and later this plugin's other
encoders) as readily as wav2vec 2.0, and it writes the fine-tuning overrides (dropouts, masking,
layerdrop, ``feature_grad_mult``) into that cfg before building. This class keeps that machinery,
registers it as ``sew_ctc`` (``wav2vec_ctc_v2`` of the original SEW release is in
``sew_plugin.models.original``), fails early with the config key when ``w2v_path`` is missing, fixes the operating
point of a St-SEW encoder for deterministic fine-tuning (``operating_point``), fixes (or learns) the
lambda of a CIF-compressed encoder (``cif_lambda``) and repeats its compressed frames by their durations
before CTC (``cif_upsample``), shortens the waveform before the encoder (``input_downsample``, Zaiem
et al.; ``sew_plugin.modules.input_downsample``) with a head that may emit several frames per encoder
frame (``ctc_frames_per_step``), and adds early-exit CTC heads after chosen layers (``exit_layers``;
``sew_plugin.modules.early_exit``).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
from fairseq.models import build_model as build_registered_model
from fairseq.models.wav2vec.wav2vec2_asr import Linear, Wav2Vec2CtcConfig, Wav2VecCtc
from torch import nn

from ..data.audio import SAMPLE_RATE
from ..data.checkpoints import read_weights, refusing_unsafe, verify_checkpoint
from ..modules.cif import upsample_by_durations
from ..modules.feature_extractor import conv_layers_of, output_frames, total_stride
from ..modules.early_exit import ExitRunner, exit_head, parse_exit_layers, parse_exit_weights
from ..modules.input_downsample import InputDownsampler, expand_ctc_frames, expand_padding_mask
from ..modules.layerwise import make_steppable, transformer_layers
from ..modules.masked_group_norm import mask_feature_norm, valid_samples
from ..modules.side_outputs import collecting
from ..modules.squeeze import lengths_to_padding_mask
from .registry import register_models
from ..config_rules import Rule, at_least, check_rules, choose, is_rate, masking_rules

# model.exit_training: which parameters train, by name
EXIT_TRAINING = {
    "joint": lambda name: True,  # backbone and every head together
    "exits_only": lambda name: name.startswith("exit_heads."),  # step two: backbone and final head frozen
}


def encoder_width(cfg) -> Optional[int]:
    """``encoder_embed_dim`` of the pre-trained encoder, from its config (``w2v_args``) once read."""
    return getattr(getattr(cfg.w2v_args, "model", None), "encoder_embed_dim", None)


# The fine-tuning values fairseq writes over the pre-trained encoder's (layerdrop goes to its
# encoder_layerdrop), checked under this config's own keys before the checkpoint is read, and again
# once its encoder's config is known (the channel masks' bound needs the encoder's width).
CTC_RULES: List[Rule] = [
    *[(key, is_rate, "in [0, 1)") for key in ("final_dropout", "dropout", "attention_dropout",
                                             "activation_dropout", "dropout_input", "layerdrop")],
    *masking_rules(encoder_width),
    ("feature_grad_mult", at_least(0), ">= 0"),
    ("freeze_finetune_updates", at_least(0), ">= 0"),
    ("encoder_lr_scale", lambda value, cfg: 0 < value <= 1, "in (0, 1]"),
    ("reinit_layers", at_least(-1), "-1 (every layer) or >= 0"),
]


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
    cif_lambda: Optional[float] = field(
        default=None,
        metadata={"help": "CIF encoders: fixed lambda in [0, 2) to fine-tune at; unset: keep sampling"},
    )
    masked_feature_norm: bool = field(
        default=False,
        metadata={"help": "GroupNorm front ends (extractor_mode default): normalise each utterance's first-layer "
                  "features over its own frames in fine-tuning too (inference always does)"},
    )
    cif_learn_lambda: bool = field(
        default=False,
        metadata={"help": "CIF encoders: learn lambda, starting at cif_lambda, through a sigmoid onto "
                  "[0, cif_lambda_max) of pre-training"},
    )
    cif_upsample: bool = field(
        default=True,
        metadata={"help": "CIF encoders: repeat each compressed frame by the 20 ms frames it integrated before "
                  "CTC (needed when compressed frames can be fewer than the labels, e.g. letters above ~60 ms); "
                  "false: CTC on the compressed frames"},
    )
    input_downsample: str = field(
        default="none",
        metadata={"help": "shorten the waveform before the encoder: none, conv (learned, kernel 161), "
                  "avgpool (kernel 10) or resample (to 16/f kHz)"},
    )
    input_downsample_factor: int = field(default=1, metadata={"help": "input_downsample factor f: 2, 3 or 4"})
    ctc_frames_per_step: int = field(
        default=1, metadata={"help": "CTC frames the head emits per encoder frame (2 for input_downsample_factor 4)"}
    )
    reinit_layers: int = field(
        default=0,
        metadata={"help": "start the top N transformer layers of the pre-trained encoder afresh (-1: all of "
                  "them), as its constructor initialises them (Pasad et al., 2021: the top layers specialise "
                  "in the pre-training task); the layers below and the front end keep their pre-trained weights"},
    )
    encoder_lr_scale: float = field(
        default=1.0,
        metadata={"help": "learning rate of the pre-trained encoder as a share of the head's (e.g. 0.1); "
                  "other than 1 needs fairseq's optimizer=composite with dynamic_groups=true"},
    )


class SEWCtc(Wav2VecCtc):
    """Encoder + linear CTC head (``w2v_encoder.proj``), trained with fairseq's ``ctc`` criterion.

    ``forward(source (B, S), padding_mask (B, S))`` -> ``encoder_out`` (T, B, V) logits at the
    encoder's frame rate and the (B, T) ``padding_mask``.
    """

    opens_valid_samples = True  # its forward says each row's valid samples (masked GroupNorm front end)

    def __init__(self, cfg: SEWCtcConfig, w2v_encoder):
        super().__init__(cfg, w2v_encoder)
        self.input_downsampler = None
        if cfg.input_downsample != "none":
            self.input_downsampler = InputDownsampler(cfg.input_downsample, cfg.input_downsample_factor)
        elif cfg.input_downsample_factor != 1:
            raise ValueError(f"model.input_downsample_factor={cfg.input_downsample_factor} needs model.input_downsample")
        if cfg.ctc_frames_per_step < 1:
            raise ValueError(f"model.ctc_frames_per_step must be >= 1, got {cfg.ctc_frames_per_step}")
        if cfg.ctc_frames_per_step > 1:
            if str(cfg.exit_layers or "").strip():
                raise ValueError("model.ctc_frames_per_step > 1 is not supported with model.exit_layers")
            proj = w2v_encoder.proj
            w2v_encoder.proj = Linear(proj.in_features, proj.out_features * cfg.ctc_frames_per_step)

    @classmethod
    def build_model(cls, cfg: SEWCtcConfig, task):
        check_rules(cfg, CTC_RULES)
        if cfg.w2v_args is not None:  # a fine-tuned checkpoint carries its encoder's config
            model = super().build_model(cfg, task)
        else:
            if not Path(cfg.w2v_path).is_file():
                raise FileNotFoundError(f"model.w2v_path={cfg.w2v_path!r}: pre-trained checkpoint not found")
            with refusing_unsafe(verify_checkpoint(cfg.w2v_path)):
                model = super().build_model(cfg, task)
            check_rules(cfg, CTC_RULES)  # with the encoder's config fairseq stored in cfg.w2v_args
            if cfg.reinit_layers:  # a fine-tuned checkpoint's own weights replace these anyway
                reinit_top_layers(model, cfg.w2v_args.model, cfg.reinit_layers)
        if cfg.operating_point:
            set_operating_point(model, cfg.operating_point)
        if cfg.cif_lambda is not None or cfg.cif_learn_lambda:
            set_cif_lambda(model, cfg.cif_lambda, cfg.cif_learn_lambda)
        if str(cfg.exit_layers or "").strip():
            model.add_exits(cfg, len(task.target_dictionary))
        if cfg.masked_feature_norm:
            mask_feature_norm(model)
        if cfg.encoder_lr_scale != 1:
            scale_encoder_lr(model, cfg.encoder_lr_scale)
        return model

    def add_exits(self, cfg: SEWCtcConfig, vocab: int) -> None:
        """Exit heads after ``cfg.exit_layers``, trained as ``cfg.exit_training`` says."""
        encoder = make_steppable(self.w2v_encoder.w2v_model.encoder)
        self.exit_layers = parse_exit_layers(cfg.exit_layers, encoder.num_layers)
        self.exit_weights = parse_exit_weights(cfg.exit_loss_weights, len(self.exit_layers) + 1)
        trains = choose(EXIT_TRAINING, cfg.exit_training, "exit_training")
        dim = self.w2v_encoder.proj.in_features
        self.exit_heads = nn.ModuleDict({str(i): exit_head(dim, vocab, cfg.exit_head) for i in self.exit_layers})
        self.exit_runner = ExitRunner(encoder, self.exit_heads, self.exit_layers, self.w2v_encoder.final_dropout)
        encoder.layer_hook = self.exit_runner
        if cfg.exit_init:
            self.load_backbone(cfg.exit_init)
        for name, param in self.named_parameters():
            param.requires_grad = param.requires_grad and trains(name)

    def load_backbone(self, path: str) -> None:
        """Every weight but the exit heads from a fine-tuned CTC checkpoint (refusing a mismatch)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"model.exit_init={path!r}: fine-tuned checkpoint not found")
        state = read_weights(path)
        own = {k for k in self.state_dict() if not k.startswith("exit_heads.")}
        if set(state) != own:
            raise ValueError(f"model.exit_init={path!r} does not match this model: missing "
                             f"{sorted(own - set(state))[:5]}, unexpected {sorted(set(state) - own)[:5]}")
        self.load_state_dict(state, strict=False)

    def ctc_frames(self, samples: torch.Tensor) -> Optional[torch.Tensor]:
        """(B,) waveform samples -> (B,) frames the CTC head emits for them (input downsampling, the
        encoder's conv stack, ``ctc_frames_per_step``): what CTC must align the labels with, counted
        by the fine-tuning task. None where the count depends on the audio: a CIF encoder emits at
        most one frame per 20 ms frame (``cif_upsample`` drops its unfired tail)."""
        encoder = self.w2v_encoder.w2v_model
        if getattr(encoder, "cif", None) is not None:
            return None
        if self.input_downsampler is not None:
            samples = self.input_downsampler.output_lengths(samples)
        return output_frames(samples, conv_layers_of(encoder.feature_extractor)) * self.cfg.ctc_frames_per_step

    def frame_period_ms(self) -> Optional[float]:
        """Audio per CTC frame: the encoder's output period (20 ms: squeezed encoders upsample back;
        fairseq's wav2vec 2.0 too) times the input downsampling factor, over ``ctc_frames_per_step``.
        None for a CIF encoder without ``cif_upsample`` (CTC on its compressed frames, whose period
        depends on the audio)."""
        encoder = self.w2v_encoder.w2v_model
        if getattr(encoder, "cif", None) is not None and not self.cfg.cif_upsample:
            return None
        period = 1000 * total_stride(conv_layers_of(encoder.feature_extractor)) / SAMPLE_RATE
        factor = self.input_downsampler.factor if self.input_downsampler is not None else 1
        return period * factor / self.cfg.ctc_frames_per_step

    @property
    def min_source_samples(self) -> int:
        """The fewest samples that still give the extractor one frame once downsampled; 0 without
        downsampling or with an extractor that does not say (fairseq's, before ``load_checkpoint``
        makes it the plugin's: read at each call, not at construction)."""
        extractor_min = getattr(self.w2v_encoder.w2v_model.feature_extractor, "min_samples", 0)
        if self.input_downsampler is None or not extractor_min:
            return 0
        return self.input_downsampler.min_input_samples(extractor_min)

    def check_downsampled_length(self, samples: int) -> None:
        """Refuse a waveform that leaves the feature extractor no frame once downsampled, counting
        the samples the caller gave (the extractor's own error would count the downsampled ones)."""
        if samples < self.min_source_samples:
            raise ValueError(
                f"waveform of {samples} samples is shorter than the feature extractor's receptive field "
                f"after model.input_downsample x{self.input_downsampler.factor}: at least "
                f"{self.min_source_samples} samples give one frame")

    def forward(self, **kwargs):
        """fairseq's CTC forward; with exits, also ``exit_logits`` {layer: (T, B, V)} (training, or no
        policy) or, under an exit policy, the logits of each utterance's exit in ``encoder_out`` and
        its exit layer in ``exit_layer`` (B,). CIF encoders: the compression (``CifResult``) in
        ``cif`` and, with ``cif_upsample``, logits repeated by the compressed frames' durations. With
        ``input_downsample`` the waveform is shortened first; with ``ctc_frames_per_step`` k, each
        encoder frame gives k CTC frames. What the encoder computes besides its output reaches this
        forward through ``sew_plugin.modules.side_outputs``."""
        if self.input_downsampler is not None:
            self.check_downsampled_length(kwargs["source"].size(-1))
            kwargs["source"], kwargs["padding_mask"] = self.input_downsampler(kwargs["source"], kwargs.get("padding_mask"))
        with collecting() as reported, valid_samples(kwargs.get("padding_mask")):  # valid_samples: masked GroupNorm
            out = super().forward(**kwargs)
        if "exits" in reported:
            out = _with_exits(out, reported["exits"], self.exit_runner.policy is not None)
        if "cif" in reported:
            out["cif"] = reported["cif"]
            if self.cfg.cif_upsample:
                out = _upsample_output(out, reported["cif"].durations)
        if self.cfg.ctc_frames_per_step > 1:
            out["encoder_out"] = expand_ctc_frames(out["encoder_out"], self.cfg.ctc_frames_per_step)
            out["padding_mask"] = expand_padding_mask(out["padding_mask"], self.cfg.ctc_frames_per_step)
        return out


def _with_exits(out: dict, record, policy: bool) -> dict:
    """Without a policy, every exit's logits as ``exit_logits``; with one, each utterance's logits
    from the exit it left at (the last layer's for those that stayed) and its ``exit_layer``."""
    if not policy:
        out["exit_logits"] = dict(record.logits)
        return out
    final = out["encoder_out"]  # (T, B', V) for the utterances that reached the last layer
    logits = final.new_zeros(final.size(0), record.exit_layer.numel(), final.size(-1))
    logits[:, record.remaining_rows] = final
    for layer, rows in record.rows.items():
        logits[:, rows] = record.logits[layer]
    out["encoder_out"], out["exit_layer"] = logits, record.exit_layer
    return out


def _upsample_output(out: dict, durations) -> dict:
    """Logits (and exit logits) repeated by the CIF durations; the padding mask follows."""
    def upsample(logits):
        x, lengths = upsample_by_durations(logits.transpose(0, 1), durations)
        return x.transpose(0, 1), lengths

    out["encoder_out"], lengths = upsample(out["encoder_out"])
    out["padding_mask"] = lengths_to_padding_mask(lengths, out["encoder_out"].size(0))
    if "exit_logits" in out:
        out["exit_logits"] = {k: upsample(v)[0] for k, v in out["exit_logits"].items()}
    return out


def reinit_top_layers(model, encoder_cfg, count: int) -> None:
    """Give the top ``count`` (-1: all) transformer layers of a CTC model's pre-trained encoder the
    weights a freshly built encoder of config ``encoder_cfg`` starts with (its own initialisation)."""
    layers = transformer_layers(model.w2v_encoder.w2v_model.encoder)
    count = len(layers) if count == -1 else count
    if count > len(layers):
        raise ValueError(f"model.reinit_layers must be at most the encoder's {len(layers)} layers, got {count}")
    fresh = transformer_layers(build_registered_model(encoder_cfg, None, from_checkpoint=True).encoder)
    for i in range(len(layers) - count, len(layers)):
        layers[i].load_state_dict(fresh[i].state_dict())


def scale_encoder_lr(model, scale: float) -> None:
    """Mark the pre-trained encoder's parameters for a learning rate ``scale`` times the rest's
    (the head's), in the form fairseq's ``composite`` optimizer reads (``optim_overrides``)."""
    for param in model.w2v_encoder.w2v_model.parameters():
        param.optim_overrides = {"optimizer": {"lr_scale": scale}}


def set_cif_lambda(model, lam: Optional[float], learnable: bool = False) -> None:
    """Fix (or learn, starting at ``lam``) the lambda of a CTC model's CIF encoder; None: sample again."""
    cif = getattr(model.w2v_encoder.w2v_model, "cif", None)
    if cif is None:
        raise ValueError("model.cif_lambda applies to encoders pre-trained with model.compressor=cif")
    cif.set_lambda(lam, learnable)


SAMPLED_POINT = ("this St-SEW model samples its operating point at every forward (it was fine-tuned "
                 "stochastically): fix one with --operating-point S_f,S_k,S_q (e.g. 2,2,1)")


def set_operating_point(model, point: Optional[str]) -> None:
    """Fix the (S_f, S_k, S_q) of a CTC model's St-SEW encoder, or return it to sampling (None)."""
    encoder = model.w2v_encoder.w2v_model.encoder
    if not hasattr(encoder, "set_operating_point"):
        raise ValueError(f"model.operating_point applies to St-SEW encoders, not {type(encoder).__name__}")
    encoder.set_operating_point(point)


register_models(SEWCtc, SEWCtcConfig, "sew_ctc")
