"""oneDNN's inference kernels on the CPU: linear weights packed once (bf16, and fp32 in SEW-D's
transformer), query, key and value projected as one product and GELUs fused into products (bf16).

- **Packed weights** (``PackedLinear``): PyTorch's bf16 ``F.linear`` hands oneDNN the weight as
  stored, (out, in), and oneDNN reorders it into the blocked layout its AMX / AVX-512 kernels read,
  at every call. ``PackedLinear`` keeps that reordered copy (``torch.ops.mkldnn._reorder_linear_weight``,
  what PyTorch's compiler does with frozen bf16 weights) and multiplies with it. Measured on a
  2-core Intel Xeon with AMX (2 threads), one SEW-D-mid layer's six products ran 0.90-1.05x /
  1.25-1.30x / 1.02-1.10x / 1.07-1.14x as fast at 249 / 749 / 1992 / 5992 rows in four runs of
  ``examples/benchmarks/linear_formats.py``, the whole bf16 forward 1.01-1.15x. The results
  are the plain product's but for an occasional sum that oneDNN splits differently for the two
  layouts (at 749 rows, one output in 10,000 differed by one bf16 rounding).
  The plain weight stays the parameter (state dicts, other devices, autograd and traces use it), so
  a bf16 model holds its linear weights twice: as much memory as its fp32 weights took.
  In fp32 (SEW-D's transformer, ``inference.precision``) the packed product also adds the bias
  inside, where PyTorch's product first copied it into the output: at 249 rows one SEW-D-mid
  layer's products took 4.15 vs 4.74 ms, and the whole fp32 forward ran 1.043x / 1.006x / 0.994x /
  1.022x as fast at 10 s batch 1 / 10 s batch 8 / 30 s batch 1 / 30 s batch 8
  (``examples/benchmarks/onednn_changes.py fp32-packing``), its features within 7e-6 of PyTorch's.
- **Stacked projections** (``StackedLinear``): products that share their input (SEW-D's query, key
  and value projections) as one product with their weights' rows stacked and packed. oneDNN ran
  a 512 -> 512 bf16 product on one of two threads at some row counts (95 us at 249 rows with one
  thread or two), and the 512 -> 1536 one on both (146 vs 298 us). On the same Xeon the three
  projections and their split into heads took 261-268 vs 469-472 us at 249 rows (10 s), 454-456
  vs 802-813 at 498, 626-635 vs 716-719 at 749; SEW-D-mid's whole bf16 forward ran 1.074x /
  1.058x / 1.005x as fast at 10 / 20 / 30 s, batch 1 (``examples/benchmarks/onednn_changes.py stacked``).
  At 1494 rows the separate products measured faster (1114-1135 vs 1224-1248 us; the stacked
  output, 4.6 MB, is split into heads from beyond the 2 MB L2 cache): ``StackedLinear.MAX_BYTES``.
  Each output is the separate product's (bit-identical in those runs). A bf16 SEW-D then holds its
  query and key weights three times (the parameter, ``PackedLinear``'s copy, which projects the
  position tables, and the stacked one) and its value weights twice or three times.
- **Fused GELU** (``linear_gelu``, ``conv2d_gelu``): in bf16, PyTorch's GELU is a pass of its own
  over a product's output (to fp32, erf, back to bf16). oneDNN applies the same exact (erf) GELU to
  the product's fp32 sums before rounding them, once (``_linear_pointwise`` and
  ``_convolution_pointwise``, the fused kernels PyTorch's own compiler uses on the CPU). Measured on
  the same Xeon:

  - SEW-D-mid's feed-forward input product and its GELU: 0.39 vs 0.56 ms at 249 frames (10 s),
    6.0 vs 6.9 ms at 1992;
  - SEW-D-mid's WFE-C convolutions and their GELU: 1.5 vs 3.2 ms (the second layer, 10 s) and
    1.0 vs 1.5 ms (the first kernel-1 layer).

  The results differ from the separate GELU's by at most one bf16 rounding (the GELU sees the
  unrounded sum).

In fp32 the fused GELU ran no faster, so fp32 keeps its separate GELU, in place on the product
(the packed one in SEW-D's transformer, PyTorch's elsewhere).
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from . import weights_key


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """A PyTorch built with oneDNN's fused products, on a CPU where oneDNN computes bf16 (the check
    PyTorch's own compiler makes before it uses them; CPUs without AVX-512 lack it)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported")
            and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


def _inference_on_cpu(x: torch.Tensor) -> bool:
    """``x`` on the CPU with no autograd, trace or torch.compile (the kernels are inference-only),
    and ``available()``."""
    return (x.device.type == "cpu" and not torch.is_grad_enabled()
            and not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and available())


def applies(x: torch.Tensor) -> bool:
    """Whether a product of ``x`` runs on the bf16 kernels (packed weight, stacked projections, fused
    GELU): bf16, and ``_inference_on_cpu``."""
    return x.dtype == torch.bfloat16 and _inference_on_cpu(x)


def packs(x: torch.Tensor) -> bool:
    """Whether ``PackedLinear`` multiplies ``x`` with its packed weight: where ``applies``, or fp32
    outside autocast (which would have the product in its own format) on the CPU."""
    fp32 = x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu") and _inference_on_cpu(x)
    return fp32 or applies(x)


def _snapshot(tensors) -> tuple:
    """What a copy made from ``tensors`` (a packed weight) is valid for: the tensors, their storages
    (held, so that a storage swapped in later cannot take a freed one's address) and their
    ``weights_key`` (version counters)."""
    return tuple(tensors), tuple(t.detach() for t in tensors), weights_key(*tensors)


def _unchanged(snapshot, tensors) -> bool:
    """Whether ``tensors`` are still those of ``snapshot`` (``_snapshot``), unwritten since."""
    return (snapshot is not None and len(snapshot[0]) == len(tensors)
            and all(a is b for a, b in zip(snapshot[0], tensors)) and snapshot[2] == weights_key(*tensors))


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` (the same parameters, shared) that multiplies with its weight in oneDNN's
    layout where ``packs``: (..., in) -> (..., out), as ``nn.Linear`` computes it.

    The weight is packed at the first such product and again whenever it has changed since: another
    tensor, a write that bumps its version counter (``load_state_dict``, an optimizer step, any
    in-place operation on the parameter), a move or cast (``.to``, ``.float``). A write through
    ``weight.data`` bypasses the version counter: call ``repack()`` after one. A weight made under
    ``torch.inference_mode`` has no version counter and is packed at every product. Hooks
    registered on the ``nn.Linear`` before the swap are not carried over."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight, self.bias = linear.weight, linear.bias
        self.train(linear.training)
        self.repack()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.weight.dtype == x.dtype and x.size(-1) == self.in_features and packs(x)):
            return super().forward(x)  # and nn.Linear's error for a wrong input size
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(), self.bias, "none", [], "none")

    def packed_weight(self) -> torch.Tensor:
        """The weight in oneDNN's layout (an mkldnn tensor of shape (out, in)), packed anew if the
        weight changed since it was last packed."""
        if not _unchanged(self._packed_of, (self.weight,)):
            with torch.no_grad():
                self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach())
            self._packed_of = _snapshot((self.weight,))
        return self._packed

    def repack(self) -> None:
        """Drop the packed weight: the next product packs the weight as it is then."""
        self._packed, self._packed_of = None, None

    def _apply(self, fn, recurse=True):
        self.repack()  # a move or cast replaces the weight's storage (its version counter stays)
        return super()._apply(fn, recurse)

    def __getstate__(self):
        """Copies and pickles go without the packed weight (mkldnn tensors have no storage to copy):
        it is packed again at the copy's first product."""
        return {**self.__dict__, "_packed": None, "_packed_of": None}


class StackedLinear:
    """``linears`` (plain ``nn.Linear`` or ``PackedLinear`` layers of one input width, with biases and
    no hooks) as one bf16 product, their weights' rows stacked and packed in oneDNN's layout. It
    holds no parameters: its owner keeps the layers (their names, state dicts and autograd stay
    theirs) and calls ``product`` where ``applies``; the stacked copy is made at the first product
    and again whenever a weight changed (other tensors, another storage, or a write that bumps a
    version counter: ``_unchanged``, as ``PackedLinear``)."""

    # the stacked (rows, 3 x 512) bf16 output up to which one product measured faster: 1245 rows
    # (3.7 MB) were, 1494 rows (4.6 MB) were not (see above)
    MAX_BYTES = 4 << 20

    def __init__(self):
        self._copy = None  # (``_snapshot`` of the layers' tensors, packed weight, stacked bias)

    def product(self, linears, x: torch.Tensor):
        """The (..., sum of out) product of ``x`` with every layer at once, or None where it does not
        apply: not bf16 layers of ``x``'s format on oneDNN (``applies``), a layer with hooks (they
        would not run) or of another class, or an output over ``MAX_BYTES``."""
        if not (applies(x) and all(type(m) in (nn.Linear, PackedLinear) and m.weight.dtype == x.dtype
                                   and m.bias is not None and m.in_features == x.size(-1)
                                   and not (m._forward_hooks or m._forward_pre_hooks) for m in linears)):
            return None
        if x[..., :1].numel() * sum(m.out_features for m in linears) * x.element_size() > self.MAX_BYTES:
            return None
        tensors = tuple(t for m in linears for t in (m.weight, m.bias))
        if self._copy is None or not _unchanged(self._copy[0], tensors):
            with torch.no_grad():
                weight = torch.ops.mkldnn._reorder_linear_weight(torch.cat([m.weight.detach() for m in linears]))
                self._copy = (_snapshot(tensors), weight, torch.cat([m.bias.detach() for m in linears]))
        _, weight, bias = self._copy
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "none")

    def __getstate__(self):
        """Copies and pickles go without the stacked copy (an mkldnn tensor has no storage to copy)."""
        return {"_copy": None}


def pack_linear_layers(module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace ``module``'s CPU ``nn.Linear`` layers of weights in ``dtype`` (bf16 or fp32) by
    ``PackedLinear`` ones sharing their parameters, in place, where oneDNN computes bf16
    (``available``: CPUs with AVX-512); the number replaced. fp32 layers whose weights are inference
    tensors (made under ``torch.inference_mode``: no version counter, so they would be packed again
    at every product) stay as they are; bf16 ones are packed even so. A layer
    registered in several places becomes one ``PackedLinear``. Layers that are never called as
    modules (fairseq's attention hands its projections' weights to PyTorch's attention function:
    SEW's and wav2vec 2.0's) never pack, and hold no second copy."""
    if not available():
        return 0
    swapped = {}
    for parent in list(module.modules()):
        for name, child in list(parent._modules.items()):
            if type(child) is nn.Linear and child.weight.dtype == dtype and child.weight.device.type == "cpu" \
                    and not (dtype == torch.float32 and child.weight.is_inference()):
                if id(child) not in swapped:
                    swapped[id(child)] = PackedLinear(child)
                setattr(parent, name, swapped[id(child)])
    return len(swapped)


def onednn_weight(linear: nn.Module, x: torch.Tensor):
    """The weight oneDNN multiplies ``x`` with (a ``PackedLinear``'s packed one), or None where
    PyTorch's product runs: not an ``nn.Linear`` of ``x``'s format and width, or not ``applies``."""
    if not (isinstance(linear, nn.Linear) and linear.weight.dtype == x.dtype
            and x.size(-1) == linear.in_features and applies(x)):
        return None
    return linear.packed_weight() if isinstance(linear, PackedLinear) else linear.weight


def linear_gelu(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``gelu(linear(x))``, (..., in) -> (..., out): fused where oneDNN takes the product
    (``onednn_weight``), else PyTorch's product and GELU."""
    weight = onednn_weight(linear, x)
    if weight is not None:
        return torch.ops.mkldnn._linear_pointwise(x, weight, linear.bias, "gelu", [], "none")
    if torch.is_grad_enabled() or linear._forward_hooks:  # a hook sees the product itself
        return F.gelu(linear(x))
    # in place on the fresh product (bit-identical): a new output was a fresh allocation whose pages
    # the kernel faulted in, which made the GELU 3.5x slower (fp32, 5992 x 2048: 15.3 vs 4.4 ms)
    return torch.ops.aten.gelu_(linear(x))


def conv2d_gelu(x: torch.Tensor, weight: torch.Tensor, bias, stride, groups: int) -> torch.Tensor:
    """``gelu(conv2d(x, weight, bias, stride, groups=groups))`` without padding: fused where
    ``applies``; (B, C, H, W) -> (B, C', H', W') in the layout oneDNN chooses for ``x``'s."""
    if applies(x):
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, [0, 0], list(stride), [1, 1], groups,
                                                       "gelu", [], "none")
    return torch.ops.aten.gelu_(F.conv2d(x, weight, bias, stride=stride, groups=groups))
