"""Fairseq's unpadded extractor convolutions, run the faster way on the CPU (``convolve``): shared by
the feature extractor and the GroupNorm front end's recording statistics, so both compute the
same first layer."""

import torch
import torch.nn.functional as F

from . import onednn
from .int8_linear import Int8Conv1d


def convolve(conv: torch.nn.Conv1d, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """``conv(x)`` for fairseq's unpadded extractor convolutions, (B, C_in, T) -> (B, C_out, T'), with
    ``x`` taken in the convolution's own format (``inference.precision`` keeps some in fp32), and
    with ``gelu`` (without autograd) its GELU, fused into the product in bf16 (``onednn``). Run the
    faster way (measured on a 2-core Intel Xeon with AMX, 2 threads):

    - one input channel (the first layer, on the waveform): a product of the (C_out, k) kernel with
      the (B, k, T') waveform frames; the same arithmetic as oneDNN's convolution (bit-identical in
      fp32 and bf16) in a tenth of the time (0.46 vs 4.4 ms for 10 s, c=64);
    - pointwise (kernel 1) layers in fp32 on the CPU: a batched matrix product, 1.05-9x faster than
      oneDNN's convolution for 64-512 channels at 4,000-48,000 frames in groups of 2 utterances (the
      narrower, the more: 9x at 64, 1.5-2x at 128, 1.05-1.45x at 512); without a bias (fairseq's
      default) the same sums, bit-identical, with one the bias added after the sum (within fp32's
      rounding of the convolution's);
    - half-precision weights (bf16 / fp16) on the CPU: the convolution on (B, T, C) memory, where
      oneDNN's half-precision kernels need no reorder of the activations before and after
      (SEW-D-mid's WFE-C, 10 s, bf16: 32 vs 54 ms); the result is a (B, C, T) view of that
      memory. In fp32 the plain layout measured faster, and is kept.
    """
    if isinstance(conv, Int8Conv1d):  # an int8 model's (inference.precision): on (B, T, C) memory itself
        return _then_gelu(conv(x), gelu)
    kernel, stride, dtype = conv.kernel_size[0], conv.stride[0], conv.weight.dtype
    if conv.padding != (0,) or conv.dilation != (1,):
        return _then_gelu(conv(x.to(dtype)), gelu)
    if conv.in_channels == 1 and conv.groups == 1:
        x = x.to(dtype)
        # the frames laid out as (B, k, T') before the product (k x T' values, a tenth of its output):
        # from the strided view, matmul made its (B, C_out, T') result contiguous afterwards, a
        # transposing copy of the whole output that took 20x the product (10 s, c=64: 9.6 vs 0.46 ms)
        frames = x[:, 0].unfold(-1, kernel, stride).transpose(1, 2).contiguous()  # (B, k, T')
        return _product(conv.weight[:, 0], frames, conv.bias, gelu)
    hooked = bool(conv._forward_hooks or conv._forward_pre_hooks)  # inference.precision's casts
    if kernel == 1 and stride == 1 and conv.groups == 1 and dtype == torch.float32 and x.device.type == "cpu" \
            and not hooked:
        # pointwise: the (C_out, C_in) kernel times the (B, C_in, T) input as it lies, the result
        # written as (B, C_out, T) by bmm itself (matmul made a (B * T, C_out) product and transposed
        # it). A convolution with hooks (a bf16 model's narrow ones, kept fp32) runs as the module
        return _product(conv.weight[:, :, 0], x.to(dtype), conv.bias, gelu)
    if dtype in (torch.bfloat16, torch.float16) and x.device.type == "cpu":
        x = x.unsqueeze(2).to(dtype, memory_format=torch.channels_last)  # (B, C, 1, T) in (B, T, C) memory: one copy at most
        if gelu:
            return onednn.conv2d_gelu(x, conv.weight.unsqueeze(2), conv.bias, (1, stride), conv.groups).squeeze(2)
        return F.conv2d(x, conv.weight.unsqueeze(2), conv.bias, stride=(1, stride), groups=conv.groups).squeeze(2)
    return _then_gelu(conv(x.to(dtype)), gelu)


def _product(kernel: torch.Tensor, x: torch.Tensor, bias, gelu: bool) -> torch.Tensor:
    """(C_out, K) kernel times each utterance's (K, T) columns, (B, K, T) -> (B, C_out, T), written in
    that layout by bmm itself; the bias added to the fresh product in place."""
    y = torch.bmm(kernel.expand(x.size(0), -1, -1), x)
    return _then_gelu(y if bias is None else y.add_(bias[:, None]), gelu)


def _then_gelu(y: torch.Tensor, gelu: bool) -> torch.Tensor:
    return torch.ops.aten.gelu_(y) if gelu else y  # in place: a fresh product, no autograd
