"""The number format a model runs inference in (``--dtype``): fp32, bf16, fp16 or int8.

The weights are converted once, when the model is loaded, rather than cast at every forward
(autocast's way: it re-casts every fp32 weight on each call; in issue 22's profile of SEW-D-mid on
an Intel Xeon the casts took 57 ms per forward, the bf16 matrix products 31 ms). Callers keep
passing what they always passed, the fp32 waveform: this plugin's feature extractor takes it
uncast (below), and a model without one gets a forward pre-hook that casts the floating-point
inputs to the model's format.

- **fp32**: the model as it is, but for SEW-D's transformer on CPUs with AVX-512 (``onednn.available``;
  measured on the AMX Xeon only): its linear layers become ``PackedLinear`` (oneDNN's fp32 product
  on a weight packed once, the bias added inside it instead of copied into the output first), at
  the cost of a second copy of those weights (about 300 MB for SEW-D-mid), for 0.99-1.04x the
  forward's speed (1.04x at 10 s, batch 1). The outputs differ from PyTorch's products by fp32
  rounding (7e-6 in SEW-D-mid's features).
- **bf16 / fp16**: every parameter and buffer in that format. The steps that need fp32 get it
  without a change here: LayerNorm and the GroupNorm front end compute their statistics in fp32
  (PyTorch's kernels accumulate half-precision input in fp32; fairseq's ``Fp32GroupNorm`` and
  ``MaskedGroupNorm`` cast to fp32 themselves), the attention softmax accumulates in fp32
  (PyTorch's softmax and ``scaled_dot_product_attention`` kernels do for half-precision input),
  the CTC log-softmax runs on ``logits.float()`` (fairseq's ``get_normalized_probs``, the exit
  heads), and CIF's running sum is float64 (``modules.cif``).
  The first block of this plugin's feature extractor (the convolution on the waveform and its
  norm; wav2vec 2.0's too once ``checkpoint.load_checkpoint`` has made fairseq's extractor the
  plugin's, ``feature_extractor.group_feature_extractors``) stays fp32 too, and the waveform
  reaches it uncast: its product has 10 values per frame,
  on which oneDNN's bf16 matrix product ran 4x slower than fp32's (SEW-D-mid, 10 s: 1.8 vs
  0.46 ms), and the GroupNorm after it computes in fp32 anyway (it cast the block's largest
  activation up and back down). The extractor casts each block's input to the block's format and
  hands on its output in the model's. A CTC model's input downsampler, which shortens the
  waveform before that block, stays fp32 with it.
  On the CPU in bf16 the linear layers become ``modules.onednn.PackedLinear``: each keeps its
  weight in oneDNN's blocked layout too, packed at its first product, which PyTorch's bf16 product
  would otherwise reorder at every call.
  Convolutions with 2 to ``NARROW_CONV - 1`` input channels per group (``is_narrow``: the tiny
  and demo-size models' positional and extractor convolutions, and SEW-D-tiny's positional one
  with 24) stay in fp32: on an Intel Xeon with AMX, oneDNN 3.12's bf16 kernels (torch 2.13) return
  wrong values for many such shapes (relative error near 1; seen from 2 to 16 channels per group,
  e.g. 8 with kernel 8, and at 24 with stride 4; the same class of bug as PyTorch issue 169688),
  and none with 32 or more did. On every device, so that a model converted on one and moved to
  another keeps the rule; the convolutions are small.
- **int8**: the context network's linear layers become ``modules.int8_linear.Int8Linear``
  (per-channel int8 weights, each frame's activations quantized from itself, so a padded batch
  gives what each utterance gives alone), and the convolutions of this plugin's feature extractor
  after the waveform's block become ``Int8Conv1d`` (each output frame's window quantized from
  itself; ``quantize_extractor``). The extractor was a fifth of SEW-D-mid's int8 forward at 30 s
  (100 of 600 ms, 2-core Xeon with AMX), and the most of its fp32 work after the attention. The
  waveform's block, the attention (its score and value products), the positional convolution,
  the CIF weight predictor and the CTC and exit heads stay fp32: the heads' logits are what
  decoding compares, and they are a small share of the work.
"""

from typing import Dict, List

import torch
from torch import nn

from ..modules import onednn
from ..modules.deberta_encoder import DebertaEncoder
from ..modules.int8_linear import Int8Conv1d, Int8Linear

DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                                  "int8": torch.int8}


def context_network(model: nn.Module) -> nn.Module:
    """The transformer part of a model: a CTC model's encoder (``w2v_encoder.w2v_model.encoder``),
    a pre-trained or transformers model's ``encoder``, else the model itself."""
    inner = getattr(getattr(model, "w2v_encoder", None), "w2v_model", model)
    return getattr(inner, "encoder", inner)


NARROW_CONV = 32  # input channels per group below which a convolution is kept in fp32 (above)


def is_narrow(module: nn.Module) -> bool:
    """Whether ``set_precision`` keeps this module in fp32: a ``Conv1d`` with 2 to ``NARROW_CONV - 1``
    input channels per group (one, the waveform's, runs as a matrix product:
    ``convolution.convolve``)."""
    return isinstance(module, nn.Conv1d) and 1 < module.in_channels // module.groups < NARROW_CONV


def _cast_inputs(dtype: torch.dtype):
    def hook(module, args, kwargs):
        def cast(value):
            return value.to(dtype) if torch.is_tensor(value) and value.is_floating_point() else value

        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    return hook


def _cast_output(dtype: torch.dtype):
    def hook(module, args, output):
        return output.to(dtype)

    return hook


def kept_in_fp32(model: nn.Module) -> List[nn.Module]:
    """The modules ``set_precision`` keeps in fp32 when the rest is bf16 or fp16: the narrow
    convolutions (``is_narrow``), the first block of each of this plugin's feature extractors (the
    waveform's convolution and its norm) and, before them, a CTC model's input downsampler: the
    waveform reaches both uncast (a bf16 learned or resampling filter refused the fp32 waveform)."""
    extractors = _extractors(model)
    downsampler = getattr(model, "input_downsampler", None) if extractors else None
    return ([e.conv_layers[0] for e in extractors] + ([downsampler] if downsampler is not None else [])
            + [m for m in model.modules() if is_narrow(m)])


def _extractors(model: nn.Module) -> List[nn.Module]:
    """The plugin's feature extractors in ``model`` (imported here: fairseq is slow to import, and
    the commands check their arguments with this module before they load a model)."""
    from ..modules.feature_extractor import GroupedConvFeatureExtractor

    return [m for m in model.modules() if isinstance(m, GroupedConvFeatureExtractor)]


def _convert_to_half(model: nn.Module, dtype: torch.dtype) -> None:
    """``model`` in ``dtype`` but for ``kept_in_fp32``, each part handed inputs in its own format."""
    # the kept modules' own fp32 values: a cast of the whole model and back would round them to dtype.
    # Every parameter and buffer, the non-persistent ones a state dict leaves out too (a resampler's filter)
    def tensors(module):
        return (*module.named_parameters(), *module.named_buffers())

    kept = [(module, {name: t.detach().clone() for name, t in tensors(module)}) for module in kept_in_fp32(model)]
    model.to(dtype)
    for module, values in kept:
        module.float()
        with torch.no_grad():
            for name, t in tensors(module):
                t.copy_(values[name])
    extractors = _extractors(model)
    for extractor in extractors:  # it casts each block's input itself, the waveform's block is fp32
        extractor.register_forward_hook(_cast_output(dtype))
    if not extractors:  # fairseq's own (a model not loaded by load_checkpoint): the waveform in the model's format
        model.register_forward_pre_hook(_cast_inputs(dtype), with_kwargs=True)
    for conv in (m for m in model.modules() if is_narrow(m)):  # weights, input and arithmetic in fp32
        conv.register_forward_pre_hook(_cast_inputs(torch.float32), with_kwargs=True)
        conv.register_forward_hook(_cast_output(dtype))
    onednn.pack_linear_layers(model)  # bf16 on the CPU: weights packed in oneDNN's layout at first use


def quantize_linear_layers(module: nn.Module) -> int:
    """Replace ``module``'s ``nn.Linear`` layers by ``Int8Linear`` copies, in place; the number replaced."""
    from fairseq.modules import MultiheadAttention

    for m in module.modules():
        if isinstance(m, MultiheadAttention):
            # fairseq's fast path hands the projections' weight tensors to torch's attention; an
            # int8 projection has none, so take the path that calls the projections as modules
            m.skip_embed_dim_check = True
    linear = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
              if isinstance(child, nn.Linear)]
    for parent, name, child in linear:
        setattr(parent, name, Int8Linear.from_linear(child))
    return len(linear)


def quantize_extractor(model: nn.Module) -> int:
    """Replace the convolutions of ``model``'s feature extractors (this plugin's) that take more than
    one channel by ``Int8Conv1d`` copies, in place; the number replaced. The waveform's block stays
    fp32: its product has ten values per frame, too few to gain from int8."""
    convs = [block for extractor in _extractors(model) for block in extractor.conv_layers
             if isinstance(block[0], nn.Conv1d) and block[0].in_channels > 1]
    for block in convs:
        block[0] = Int8Conv1d.from_conv(block[0])
    return len(convs)


def set_precision(model: nn.Module, dtype: str = "fp32") -> nn.Module:
    """Convert ``model`` (in eval mode, on its device) to run in ``dtype`` (a key of ``DTYPES``), in
    place, and return it. Converting a model already in bf16, fp16 or int8 is refused; fp32 may be
    asked again (nothing more changes)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; one of {', '.join(DTYPES)}")
    if getattr(model, "inference_dtype", "fp32") != "fp32":
        raise ValueError(f"the model already runs in {model.inference_dtype}")
    if dtype == "fp32":
        for encoder in (m for m in model.modules() if isinstance(m, DebertaEncoder)):
            onednn.pack_linear_layers(encoder, torch.float32)
        return model
    if model.training:
        raise ValueError(f"{dtype} is for inference: put the model in eval mode first")
    if dtype == "int8":
        quantize_linear_layers(context_network(model))
        quantize_extractor(model)
    else:
        _convert_to_half(model, DTYPES[dtype])
    model.inference_dtype = dtype
    return model


def refuse_int8_off_cpu(dtype: str, device: str, what: str = "int8") -> None:
    """int8's products are CPU kernels (oneDNN's ``qlinear_pointwise`` or ``torch._int_mm``'s):
    refused, before any model is built, on another device (``what`` names who asks)."""
    if dtype == "int8" and torch.device(device).type != "cpu":
        raise ValueError(f"{what} runs on the CPU (its products are oneDNN's or torch._int_mm's CPU kernels); on a "
                         "GPU use bf16 or fp16")


def parameter_count(model: nn.Module) -> int:
    """The model's parameters, the int8 layers' weights (buffers, not ``parameters()``) included."""
    int8 = [m for m in model.modules() if isinstance(m, Int8Linear)]  # Int8Conv1d's too: a subclass
    frozen = sum(m.weight_int8.numel() + (m.bias.numel() if m.bias is not None else 0) for m in int8)
    return sum(p.numel() for p in model.parameters()) + frozen
