"""An int8 linear layer for inference: per-output-channel int8 weights, per-frame int8 activations.

``y = (round(x / s_x) @ W_q^T) * s_x * s_w + b``, where ``s_w`` (N,) scales each output channel's
weights to [-127, 127] once, when the layer is converted, and ``s_x`` is each input row's own scale
(its largest magnitude over 127), taken at every call; the int8 product accumulates in int32.

The product is oneDNN's with the weight packed once in its blocked layout where ``onednn_int8``
(``torch.ops.onednn.qlinear_pointwise``, the kernel PyTorch's compiler uses for x86 int8): on a
2-core Xeon with AMX 1.1-2.4x faster per product than ``torch._int_mm``, which reorders the weight
at every call (SEW-D-mid's products at 249-749 rows; 2.4x for the feed-forward's 512 -> 2048; a
layer's six 1.08-1.21x), with the same int32 sums; elsewhere ``torch._int_mm``.

Why per row and not PyTorch's dynamic quantization (one activation scale per call): a scale taken
over the whole (B * T, C) input depends on the other utterances of the batch and on the padded
frames, so a padded batch would not give what each utterance gives alone (measured on the tiny test
models: 0.05 in log-probability). Per row, each frame is quantized from itself only, which is also
the more accurate choice; on a 2-core AVX-512 EPYC the product ran at 3.2x fp32's rate.
"""

import ctypes
import functools

import torch
from torch import nn

from . import kernels, weights_key


# int8_rows.c: the quantization and the dequantization each in one pass (None: PyTorch's operations)
KERNEL = kernels.Kernel(
    "int8_rows",
    {"quantize_rows": [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int],
     "dequantize_rows": [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 2 + [ctypes.c_int],
     "scale_rows": [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_int]},
    fallback="int8 quantizes with PyTorch's operations", without="PyTorch operations")
library = KERNEL.library
status = KERNEL.status  # for benchmark reports


@functools.lru_cache(maxsize=None)
def onednn_int8() -> bool:
    """Whether oneDNN's int8 product with a packed weight runs here: PyTorch built with it, on a
    CPU with int8 dot-product instructions (VNNI; measured on an Intel Xeon with AMX only, where
    it was faster; elsewhere ``_int_mm``)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")
            and hasattr(torch.ops.onednn, "qlinear_prepack")
            and bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)()))


class Int8Linear(nn.Module):
    """A frozen int8 copy of an ``nn.Linear`` (``from_linear``); (..., in) -> (..., out) in fp32."""

    def __init__(self, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias):
        super().__init__()
        self.in_features, self.out_features = weight_int8.size(0), weight_int8.size(1)
        self.register_buffer("weight_int8", weight_int8)  # (in, out): the layout torch._int_mm takes
        self.register_buffer("weight_scale", weight_scale)  # (out,)
        self.register_buffer("bias", bias)
        self._packed = None  # (key of weight_int8, oneDNN's packed copy, zero points): _onednn_weight

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        weight, scale = quantized_rows(linear.weight.detach())
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(weight.t().contiguous(), scale, bias).train(linear.training)

    # rows quantized and multiplied at a time: a block's fp32 input and int32 product stay within
    # the CPU caches and glibc's heap. Whole, at 5992 rows (8 x 30 s) the (M, 2048) int32 product was
    # a fresh 49 MB mapping faulted in at every call, and int8 ran at 0.9-1.15x fp32's speed on a
    # 2-core Xeon with AMX; in blocks at 1.6-2.1x, with the same result
    BLOCK_BYTES = 2 << 20

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        out = rows.new_empty(rows.size(0), self.out_features)
        self._product(rows, out)
        return out.view(*x.shape[:-1], self.out_features)

    def _product(self, rows: torch.Tensor, out: torch.Tensor) -> None:
        """The (m, in) fp32 ``rows`` (each contiguous, at any distance apart: they may overlap) times
        the layer, written into the (m, out) ``out``, in blocks of rows."""
        compiled = self._kernel(rows)
        if compiled is not None and rows.stride(-1) != 1:
            rows = rows.contiguous()  # the kernel reads each row's values one after the other
        step = max(16, self.BLOCK_BYTES // (4 * max(self.in_features, self.out_features)))
        for start in range(0, rows.size(0), step):
            if compiled is not None:
                self._compiled_block(compiled, rows[start : start + step], out[start : start + step])
            else:
                self._block(rows[start : start + step], out[start : start + step])

    def _kernel(self, rows: torch.Tensor):
        """``int8_rows.c`` where it takes this call: CPU rows, fp32 contiguous scales and bias (a cast
        model's may be bf16), not traced or compiled, and a kernel built; else None."""
        buffers = (self.weight_scale, *([] if self.bias is None else [self.bias]))
        usable = (rows.device.type == "cpu" and all(b.dtype == torch.float32 and b.is_contiguous() for b in buffers)
                  and not (torch.jit.is_tracing() or torch.compiler.is_compiling()))
        return library() if usable else None

    def _compiled_block(self, compiled, rows: torch.Tensor, out: torch.Tensor) -> None:
        """``_block`` by the kernel: one pass to quantize, one to dequantize (bit-identical). On a
        2-core Xeon with AMX 1.4-2.3x faster per product than the PyTorch operations, whose passes
        cost as much as the int8 product itself at 1992 rows."""
        quantized = torch.empty(rows.shape, dtype=torch.int8)
        scale = rows.new_empty(rows.size(0))
        threads = torch.get_num_threads()
        compiled.quantize_rows(rows.data_ptr(), quantized.data_ptr(), scale.data_ptr(), *rows.shape, rows.stride(0),
                               threads)
        bias = None if self.bias is None else self.bias.data_ptr()
        packed = self._onednn_weight(quantized)
        if packed is not None:
            product = self._onednn_product(quantized, packed).contiguous()  # times weight_scale already
            compiled.scale_rows(product.data_ptr(), scale.data_ptr(), bias, out.data_ptr(), *product.shape, threads)
            return
        product = torch._int_mm(quantized, self.weight_int8).contiguous()
        compiled.dequantize_rows(product.data_ptr(), scale.data_ptr(), self.weight_scale.data_ptr(), bias,
                                 out.data_ptr(), *product.shape, threads)

    def _block(self, rows: torch.Tensor, out: torch.Tensor) -> None:
        """(m, in) fp32 rows -> their (m, out) outputs, written into ``out``, by PyTorch's operations."""
        # in place after the first pass over each (m, C) tensor, and the two scales applied one after
        # the other rather than as an (m, out) product of them: on a 2-core Xeon with AMX, 379 vs
        # 520 us for (249, 512) x (512, 512), 9.5 vs 30.7 ms at m = 1992 (the int8 product: 6.0 ms)
        scale = rows.abs().amax(1, keepdim=True).clamp_(min=torch.finfo(torch.float32).tiny).div_(127)  # (m, 1)
        quantized = torch.div(rows, scale).round_().to(torch.int8)
        packed = self._onednn_weight(quantized)
        if packed is not None:
            torch.mul(self._onednn_product(quantized, packed), scale, out=out)
        else:
            torch.mul(torch._int_mm(quantized, self.weight_int8), self.weight_scale, out=out)  # (m, out)
            out.mul_(scale)
        if self.bias is not None:
            out.add_(self.bias)

    def _onednn_weight(self, quantized: torch.Tensor):
        """oneDNN's packed copy of the weight for a product of ``quantized`` (packed at the first one,
        and again after the weight changed: ``weights_key``; a layer converted under
        ``torch.inference_mode`` has no version counter and packs at every product), or None where
        ``torch._int_mm`` runs instead: not ``onednn_int8``, off the CPU, fp32 scales cast, traced or
        compiled."""
        if not (onednn_int8() and quantized.device.type == "cpu" and self.weight_scale.dtype == torch.float32
                and not (torch.jit.is_tracing() or torch.compiler.is_compiling())):
            return None
        key = weights_key(self.weight_int8, self.weight_scale)
        if self._packed is None or self._packed[0] != key:
            packed = torch.ops.onednn.qlinear_prepack(self.weight_int8.t().contiguous(), None)
            self._packed = (key, packed, torch.zeros(self.out_features, dtype=torch.int64))
        return self._packed

    def _onednn_product(self, quantized: torch.Tensor, packed) -> torch.Tensor:
        """(m, in) int8 -> (m, out) fp32: the int32 sums times ``weight_scale`` (the scale of the
        activations, 1, and their zero point, 0, handed to oneDNN: each row's own scale follows)."""
        _, weight, zero_points = packed
        return torch.ops.onednn.qlinear_pointwise(quantized, 1.0, 0, weight, self.weight_scale, zero_points, None, 1.0,
                                                  0, torch.float32, "none", [], "")

    def __getstate__(self):
        """Copies and pickles go without the packed weight (oneDNN's tensors have no storage to copy):
        the copy packs it again at its first product."""
        state = super().__getstate__().copy()  # nn.Module's own (it drops what torch.compile adds)
        state["_packed"] = None
        return state

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8Conv1d(Int8Linear):
    """A frozen int8 copy of an unpadded ``nn.Conv1d`` with one group (``from_conv``): each output
    frame is the int8 product of its window of ``kernel_size`` input frames, quantized from itself
    (as ``Int8Linear``'s rows: a padded batch gives what each utterance gives alone), with the
    (kernel_size * in_channels, out_channels) kernel. (B, C_in, T) -> (B, C_out, T') in fp32.

    It computes on (B, T, C) memory, where a window is one stretch of memory and the windows are
    views of the input, not copies: its result is a (B, C_out, T') view of (B, T', C_out) memory,
    which the next ``Int8Conv1d`` reads in place (the feature extractor's convolutions in int8,
    ``inference.precision``).
    """

    def __init__(self, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias, kernel_size: int, stride: int):
        super().__init__(weight_int8, weight_scale, bias)
        self.kernel_size, self.stride = (kernel_size,), (stride,)  # nn.Conv1d's names: conv_layers_of reads them
        self.in_channels, self.out_channels = self.in_features // kernel_size, self.out_features

    @classmethod
    def from_conv(cls, conv: nn.Conv1d) -> "Int8Conv1d":
        if conv.groups != 1 or conv.padding != (0,) or conv.dilation != (1,):
            raise ValueError(f"an int8 convolution takes one group, no padding and no dilation, not {conv}")
        # (C_out, C_in, k) -> (C_out, k * C_in): a window's values lie frame by frame in (T, C) memory
        weight, scale = quantized_rows(conv.weight.detach().permute(0, 2, 1).reshape(conv.out_channels, -1))
        bias = None if conv.bias is None else conv.bias.detach().float().clone()
        return cls(weight.t().contiguous(), scale, bias, conv.kernel_size[0], conv.stride[0]).train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.transpose(1, 2).float()  # (B, T, C_in): in place when x is a previous layer's output
        if not frames.is_contiguous():
            frames = frames.contiguous()
        batch, length, channels = frames.shape
        (kernel,), (stride,) = self.kernel_size, self.stride
        out_length = max(0, (length - kernel) // stride + 1)
        out = frames.new_empty(batch, out_length, self.out_channels)
        for b in range(batch):  # (T', k * C_in) windows, stride * C_in values apart: overlapping views
            windows = frames[b].as_strided((out_length, kernel * channels), (stride * channels, 1))
            self._product(windows, out[b])
        return out.transpose(1, 2)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                "int8")


def quantized_rows(weight: torch.Tensor):
    """(N, K) weight -> its (N, K) int8 values and (N,) scales: each row to [-127, 127] by its own."""
    weight = weight.float()
    scale = weight.abs().amax(1).clamp(min=torch.finfo(torch.float32).tiny) / 127
    return torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8), scale
