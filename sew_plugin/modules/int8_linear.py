"""An int8 linear layer for inference: per-output-channel int8 weights, per-frame int8 activations.

``y = (round(x / s_x) @ W_q^T) * s_x * s_w + b``, where ``s_w`` (N,) scales each output channel's
weights to [-127, 127] once, when the layer is converted, and ``s_x`` is each input row's own scale
(its largest magnitude over 127), taken at every call; the int8 product accumulates in int32
(``torch._int_mm``).

Why per row and not PyTorch's dynamic quantization (one activation scale per call): a scale taken
over the whole (B * T, C) input depends on the other utterances of the batch and on the padded
frames, so a padded batch would not give what each utterance gives alone (measured on the tiny test
models: 0.05 in log-probability). Per row, each frame is quantized from itself only, which is also
the more accurate choice; on a 2-core AVX-512 EPYC the product ran at 3.2x fp32's rate.
"""

import ctypes

import torch
from torch import nn

from . import kernels


# int8_rows.c: the quantization and the dequantization each in one pass (None: PyTorch's operations)
KERNEL = kernels.Kernel(
    "int8_rows",
    {"quantize_rows": [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_int],
     "dequantize_rows": [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 2 + [ctypes.c_int]},
    fallback="int8 quantizes with PyTorch's operations", without="PyTorch operations")
library = KERNEL.library
status = KERNEL.status  # for benchmark reports


class Int8Linear(nn.Module):
    """A frozen int8 copy of an ``nn.Linear`` (``from_linear``); (..., in) -> (..., out) in fp32."""

    def __init__(self, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias):
        super().__init__()
        self.in_features, self.out_features = weight_int8.size(0), weight_int8.size(1)
        self.register_buffer("weight_int8", weight_int8)  # (in, out): the layout torch._int_mm takes
        self.register_buffer("weight_scale", weight_scale)  # (out,)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(quantized.t().contiguous(), scale, bias).train(linear.training)

    # rows quantized and multiplied at a time: a block's fp32 input and int32 product stay within
    # the CPU caches and glibc's heap. Whole, at 5992 rows (8 x 30 s) the (M, 2048) int32 product was
    # a fresh 49 MB mapping faulted in at every call, and int8 ran at 0.9-1.15x fp32's speed on a
    # 2-core Xeon with AMX; in blocks at 1.6-2.1x, with the same result
    BLOCK_BYTES = 2 << 20

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        out = rows.new_empty(rows.size(0), self.out_features)
        compiled = self._kernel(rows)
        if compiled is not None:
            rows = rows.contiguous()  # the kernel reads raw memory
        step = max(16, self.BLOCK_BYTES // (4 * max(self.in_features, self.out_features)))
        for start in range(0, rows.size(0), step):
            if compiled is not None:
                self._compiled_block(compiled, rows[start : start + step], out[start : start + step])
            else:
                self._block(rows[start : start + step], out[start : start + step])
        return out.view(*x.shape[:-1], self.out_features)

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
        compiled.quantize_rows(rows.data_ptr(), quantized.data_ptr(), scale.data_ptr(), *rows.shape, threads)
        product = torch._int_mm(quantized, self.weight_int8).contiguous()
        compiled.dequantize_rows(product.data_ptr(), scale.data_ptr(), self.weight_scale.data_ptr(),
                                 None if self.bias is None else self.bias.data_ptr(), out.data_ptr(),
                                 *product.shape, threads)

    def _block(self, rows: torch.Tensor, out: torch.Tensor) -> None:
        """(m, in) fp32 rows -> their (m, out) outputs, written into ``out``, by PyTorch's operations."""
        # in place after the first pass over each (m, C) tensor, and the two scales applied one after
        # the other rather than as an (m, out) product of them: on a 2-core Xeon with AMX, 379 vs
        # 520 us for (249, 512) x (512, 512), 9.5 vs 30.7 ms at m = 1992 (the int8 product: 6.0 ms)
        scale = rows.abs().amax(1, keepdim=True).clamp_(min=torch.finfo(torch.float32).tiny).div_(127)  # (m, 1)
        product = torch._int_mm(torch.div(rows, scale).round_().to(torch.int8), self.weight_int8)  # (m, out) int32
        torch.mul(product, self.weight_scale, out=out)
        out.mul_(scale)
        if self.bias is not None:
            out.add_(self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"
