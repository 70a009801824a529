"""Wave feature extractors: fairseq ``conv_feature_layers`` strings, and a faster way to run them.

fairseq's ``ConvFeatureExtractionModel`` builds the convolutional front end from a string that
evaluates to a list of ``(channels, kernel, stride)`` tuples. The SEW paper (section 3.2) compares
the original wav2vec 2.0 extractor (WFE-O) with a compact one (WFE-C) whose channels grow as the
time resolution shrinks, with ``l`` extra pointwise (kernel 1) convolutions after each strided one.
"""

from typing import List, Tuple

import torch
from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel

from .convolution import convolve
from .masked_group_norm import check_given_rows, rows

ConvLayers = List[Tuple[int, int, int]]


def wfe_o(channels: int = 512) -> str:
    """wav2vec 2.0's extractor (WFE-O): 7 layers of ``channels`` channels, total stride 320."""
    if channels < 1:
        raise ValueError(f"WFE-O channel count must be >= 1, got {channels}")
    return f"[({channels},10,5)] + [({channels},3,2)]*4 + [({channels},2,2)]*2"


def wfe_c(channels: int, extra_layers: int = 1) -> str:
    """The compact extractor WFE-C with channel base ``c`` and ``l`` extra pointwise layers.

    The channel count doubles each time the time resolution is halved twice
    (c, 2c, 2c, 4c, 4c, 8c, 8c); every strided layer after the first is followed by ``l``
    kernel-1 layers of the same width. With l = 1 this is 13 layers, total stride 320 (20 ms).
    """
    if channels < 1:
        raise ValueError(f"WFE-C channel base c must be >= 1, got {channels}")
    if extra_layers < 0:
        raise ValueError(f"WFE-C extra pointwise layers l must be >= 0, got {extra_layers}")
    c, l = channels, extra_layers
    parts = [f"[({c},10,5)]"]
    for width, kernel in ((2 * c, 3), (2 * c, 3), (4 * c, 3), (4 * c, 3), (8 * c, 2), (8 * c, 2)):
        parts.append(f"[({width},{kernel},2)]")
        if l:
            parts.append(f"[({width},1,1)]*{l}")
    return " + ".join(parts)


def parse_conv_layers(spec: str, key: str = "model.conv_feature_layers") -> ConvLayers:
    """Evaluate a ``conv_feature_layers`` string, raising a ``ValueError`` that names ``key``.

    fairseq itself ``eval``s the string; here it is evaluated without builtins and checked to be a
    non-empty list of positive integer triples before fairseq sees it.
    """
    try:
        layers = eval(spec, {"__builtins__": {}}, {})  # noqa: S307 - the format is fairseq's
    except Exception as err:
        raise ValueError(f"{key}={spec!r} is not a valid layer list: {err}") from None
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"{key}={spec!r} must evaluate to a non-empty list, got {layers!r}")
    for layer in layers:
        if (
            not isinstance(layer, tuple)
            or len(layer) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in layer)
        ):
            raise ValueError(
                f"{key}={spec!r}: every entry must be (channels, kernel, stride) of positive "
                f"integers, got {layer!r}"
            )
    return [tuple(layer) for layer in layers]


def total_stride(layers: ConvLayers) -> int:
    """Samples per output frame of a conv stack (320 = 20 ms at 16 kHz for WFE-O and WFE-C)."""
    stride = 1
    for _, _, s in layers:
        stride *= s
    return stride


def receptive_field(layers: ConvLayers) -> int:
    """Samples the conv stack needs for its first output frame (400 for WFE-O and WFE-C).

    Shorter waveforms have no frame at all: the stack's output-length formula goes to zero, and
    running the convolutions fails inside ``conv1d`` once an intermediate length drops below a
    kernel.
    """
    samples = 1
    for _, kernel, stride in reversed(layers):
        samples = (samples - 1) * stride + kernel
    return samples


def output_frames(num_samples: torch.Tensor, layers: ConvLayers) -> torch.Tensor:
    """Frames the stack gives for (B,) waveform lengths, in integer arithmetic, 0 (never negative)
    below the receptive field."""
    frames = num_samples.long()
    for _, kernel, stride in layers:
        frames = torch.div(frames - kernel, stride, rounding_mode="floor") + 1
    return frames.clamp(min=0)


def conv_layers_of(extractor: ConvFeatureExtractionModel) -> ConvLayers:
    """(channels, kernel, stride) of each conv of fairseq's extractor (or this plugin's), read from
    its modules."""
    convs = [block[0] for block in extractor.conv_layers]
    return [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs]


class GroupedConvFeatureExtractor(ConvFeatureExtractionModel):
    """fairseq's conv feature extractor, run so that it stays in the CPU caches and, in inference,
    holds fewer activations at once. Parameters, their names and the outputs are fairseq's.
    Each block takes its input in its convolution's format: ``inference.precision`` keeps the
    waveform's block in fp32 in a bf16 or fp16 model, and the waveform reaches it uncast.

    - On the CPU, utterances run in groups whose first-layer activations fit in the caches: a whole batch of
      C x S/5 activations overflows them, and the same convolutions run about twice as fast in
      small groups (measured: batch 8 x 10 s through WFE-C c=64, 0.84 s -> 0.44 s on 2 cores).
      Every norm in the stack is per utterance (GroupNorm over time, LayerNorm per frame).
    - Without autograd each block's GELU runs in place (``aten.gelu_``, bit-identical), so a block
      holds its input and one output instead of three tensors, and the convolutions run through
      ``convolve``: the first as a matrix product, in half precision on (B, T, C) memory.

    Traced (``torch.jit.trace``, the ONNX export) it runs as fairseq's, in one group: the groups
    depend on the traced shape, which the graph would then keep for every input.
    """

    GROUP_BYTES = 16 << 20

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S) waveform -> (B, C, T) features; ``ValueError`` if S is below the receptive field."""
        if x.size(-1) < self.min_samples:
            raise ValueError(
                f"waveform of {x.size(-1)} samples is shorter than the feature extractor's receptive "
                f"field: at least {self.min_samples} samples ({self.min_samples / 16:g} ms at 16 kHz) "
                "give one frame"
            )
        if torch.jit.is_tracing():  # one group: the groups would depend on the traced shape
            return self._forward_with_autograd(x)
        first_channels = self.conv_layers[0][0].out_channels
        per_utterance = 4 * x.size(1) * (1 + first_channels // 5)
        group = max(1, self.GROUP_BYTES // per_utterance)
        run = self._forward_with_autograd if torch.is_grad_enabled() else self._forward_without_autograd
        if x.size(0) <= group or x.device.type != "cpu":  # the groups are for the CPU's caches
            return run(x)
        check_given_rows(x.size(0))
        outs = []
        for i in range(0, x.size(0), group):
            with rows(i, i + group):  # the group's valid samples, for the masked GroupNorm
                outs.append(run(x[i : i + group]))
        return torch.cat(outs)

    def _forward_with_autograd(self, x: torch.Tensor) -> torch.Tensor:
        """fairseq's forward, each block handed its input in its convolution's format (also traced)."""
        x = x.unsqueeze(1)  # (B, 1, S)
        for block in self.conv_layers:  # an int8 model's (Int8Conv1d, no weight) take what they are given
            x = block(x.to(block[0].weight.dtype) if isinstance(block[0], torch.nn.Conv1d) else x)
        return x

    def _forward_without_autograd(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)  # (B, 1, S)
        for block in self.conv_layers:
            conv, *rest, activation = block  # conv, dropout, [norm], GELU
            assert isinstance(activation, torch.nn.GELU) and activation.approximate == "none"
            if all(isinstance(m, torch.nn.Dropout) and (m.p == 0 or not m.training) for m in rest):
                x = convolve(conv, x, gelu=True)  # nothing between the two: the GELU fused in bf16
                continue
            x = convolve(conv, x)  # the block's input is released as soon as the conv has run
            for module in rest:
                x = module(x)
            x = torch.ops.aten.gelu_(x)
        return x

    @property
    def layers(self) -> ConvLayers:
        return conv_layers_of(self)

    @property
    def min_samples(self) -> int:
        """The receptive field: the shortest waveform that gives one frame."""
        return receptive_field(self.layers)

    @classmethod
    def from_config(cls, cfg) -> "GroupedConvFeatureExtractor":
        return cls(parse_conv_layers(cfg.conv_feature_layers), dropout=0.0, mode=str(cfg.extractor_mode), conv_bias=cfg.conv_bias)


def group_feature_extractors(model: torch.nn.Module) -> int:
    """Run each fairseq ``ConvFeatureExtractionModel`` in ``model`` (wav2vec 2.0's) as a
    ``GroupedConvFeatureExtractor``, in place: the class changes, the parameters and their names
    stay, and each group of utterances gets the fp32 output fairseq's forward gives that group
    (bit-identical; fairseq's own differs by an ulp between a batch and its utterances alone).
    For inference (``checkpoint.load_checkpoint``): in bf16 its waveform block then stays fp32 and
    its GELUs fuse (``inference.precision``). Measured on a 2-core Xeon with AMX
    (``examples/benchmarks/wav2vec2_front_end.py``, two runs), wav2vec 2.0 base's whole forward at
    10 s ran 1.04-1.09x / 1.14-1.15x faster in fp32 (batch 1 / 8) and 1.28-1.35x / 1.44-1.76x in
    bf16. The number of extractors changed."""
    extractors = [m for m in model.modules() if type(m) is ConvFeatureExtractionModel]
    for extractor in extractors:
        extractor.__class__ = GroupedConvFeatureExtractor
    return len(extractors)
