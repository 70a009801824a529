"""Products with their GELU fused, for bf16 inference on the CPU.

In bf16, PyTorch's GELU is a pass of its own over a product's output (to fp32, erf, back to bf16).
oneDNN applies the same exact (erf) GELU to the product's fp32 sums before rounding them, once:
``torch.ops.mkldnn._linear_pointwise`` and ``_convolution_pointwise``, the fused kernels PyTorch's
own compiler uses on the CPU. Measured on a 2-core Intel Xeon with AMX (bf16, 2 threads):

- SEW-D-mid's feed-forward input product and its GELU: 0.39 vs 0.56 ms at 249 frames (10 s),
  6.0 vs 6.9 ms at 1992;
- SEW-D-mid's WFE-C convolutions and their GELU: 1.5 vs 3.2 ms (the second layer, 10 s) and
  1.0 vs 1.5 ms (the first kernel-1 layer).

The results differ from the separate GELU's by at most one bf16 rounding (the GELU sees the unrounded
sum). In fp32 the fused kernels ran no faster, so fp32 keeps the separate, bit-identical GELU.
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """A PyTorch built with oneDNN's fused products, on a CPU where oneDNN computes bf16 (the check
    PyTorch's own compiler makes before it uses them; CPUs without AVX-512 lack it)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported")
            and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


def applies(x: torch.Tensor) -> bool:
    """Whether a product of ``x`` takes its GELU fused: bf16 on the CPU, no autograd, trace or
    torch.compile (the fused kernels are inference-only), and ``available()``."""
    return (x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled()
            and not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and available())


def linear_gelu(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``gelu(linear(x))``, (..., in) -> (..., out): fused where ``applies`` (an ``nn.Linear`` in bf16)."""
    if isinstance(linear, nn.Linear) and linear.weight.dtype == x.dtype and applies(x):
        return torch.ops.mkldnn._linear_pointwise(x, linear.weight, linear.bias, "gelu", [], "none")
    return F.gelu(linear(x))


def conv2d_gelu(x: torch.Tensor, weight: torch.Tensor, bias, stride, groups: int) -> torch.Tensor:
    """``gelu(conv2d(x, weight, bias, stride, groups=groups))`` without padding: fused where
    ``applies``; (B, C, H, W) -> (B, C', H', W') in the layout oneDNN chooses for ``x``'s."""
    if applies(x):
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [0, 0], list(stride), [1, 1], groups,
                                                       "gelu", [], "none")
    return torch.ops.aten.gelu_(F.conv2d(x, weight, bias, stride=stride, groups=groups))
