"""Forward time, real-time factor, MACs, peak memory and parameters of models side by side
(``sew bench``; ``sew_plugin.cli.bench`` describes the rows and what each column measures).

All rows run in one process, in interleaved order that rotates every repeat, so drift of the
machine (frequency, other load) hits every row alike. Times are medians over ``repeat`` runs
after warm-up, with the spread (min-max) beside them; every row gets its speed-up over a named
baseline row measured in the same run: the median over the rotations of the baseline's time over
the row's in the same rotation (with their spread), which pairs times at most one rotation apart
where the ratio of the two medians could pair two phases of a drifting machine.
"""

import contextlib
import itertools
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .devices import check_device
from .precision import DTYPES, parameter_count, refuse_int8_off_cpu, set_precision


@dataclass
class Row:
    model: str
    batch: int
    seconds: float
    params_m: float
    median_ms: float
    min_ms: float
    max_ms: float
    rtf: float
    speedup: float
    gmacs: float
    peak_mb: float
    context_gmacs: float = 0.0
    frame_ms: float = 20.0
    gflops: float = 0.0  # achieved: 2 * MACs over the median time
    dtype: str = "fp32"  # the row's number format (``autocast-bf16`` for rows under autocast)
    peak_share: Optional[float] = None  # the median over the rotations of the row's FLOP/s over the GEMM rate (--peak)
    gemm_gflops: Optional[float] = None  # the GEMM rate at the row's format, timed in the same rotation (--peak)
    speedup_min: Optional[float] = None  # the spread of ``speedup`` over the rotations (``paired``)
    speedup_max: Optional[float] = None

    @property
    def format(self) -> str:
        """The number format its products run in (an autocast row's: the one autocast casts to)."""
        return self.dtype.removeprefix("autocast-")

    def at_peak(self, flops_per_s: float, share: float) -> None:
        self.gemm_gflops, self.peak_share = flops_per_s / 1e9, share


def paired(numerators: List[float], denominators: List[float]) -> List[float]:
    """``numerators[r] / denominators[r]`` for each rotation r: ratios of two slots timed in the same
    rotation (at most one rotation apart). Their median is the speed-up ``run`` reports, not the
    ratio of the two medians: on a machine whose speed drifts (2x within minutes on shared CPUs),
    each median may come from another phase of the machine, while a rotation's two times see
    nearly the same one."""
    return [n / d for n, d in zip(numerators, denominators)]


def _plugin_model(name: str):
    from .. import presets

    from ..modules import keep_layer_results

    model = presets.build_model(name)
    model.remove_pretraining_modules()
    keep_layer_results(model, False)  # like transformers without output_hidden_states
    return model, lambda x: model(x, mask=False, features_only=True)["x"]


def _hf_model(name: str):
    import transformers

    from ..interop.hf import sew_d_hf_config_kwargs, sew_hf_config_kwargs, sew_state_dict_to_hf
    from ..models.sew_d import SEWDModel

    ours, _ = _plugin_model(name)
    if isinstance(ours, SEWDModel):
        model = transformers.SEWDModel(transformers.SEWDConfig(**sew_d_hf_config_kwargs(ours.cfg)))
    else:
        model = transformers.SEWModel(transformers.SEWConfig(**sew_hf_config_kwargs(ours.cfg)))
    model.load_state_dict(sew_state_dict_to_hf(ours.state_dict()), strict=True)
    return model, lambda x: model(x).last_hidden_state


def available_models() -> List[str]:
    from .. import presets

    names = presets.available("pretraining")
    return names + [f"hf:{n}" for n in names if n.startswith("sew")] + ["w2v2_large"]


def build(name: str):
    """(module, forward) for a row name; the module is in eval mode. Random weights are seeded, so
    rows of one model at different settings share them."""
    torch.manual_seed(0)
    if name.endswith(":onnx"):
        return _onnx_model(name)
    if name.startswith("hf:"):
        model, forward = _hf_model(name[3:])
    elif name == "w2v2_large":  # wav2vec 2.0 large (24 x 1024) with the base recipe's front end
        from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Model

        from .. import presets

        cfg = presets.model_config("w2v2_base", encoder_layers=24, encoder_embed_dim=1024,
                                   encoder_ffn_embed_dim=4096, encoder_attention_heads=16)
        model = Wav2Vec2Model(cfg)
        model.remove_pretraining_modules()
        forward = lambda x: model(x, mask=False, features_only=True)["x"]  # noqa: E731
    elif ":exit" in name:  # early exit after layer K: the layers above it are not run
        from ..modules.layerwise import transformer_layers

        base, k = name.split(":exit", 1)
        model, _ = _plugin_model(base)
        layers = len(transformer_layers(model.encoder))
        if not (k.isdecimal() and 1 <= int(k) <= layers):
            raise ValueError(f"{name}: ':exitK' takes a layer K from 1 to {layers} ({base}'s layers)")
        layer = int(k) - 1
        forward = lambda x: model(x, mask=False, features_only=True, layer=layer)["x"]  # noqa: E731
    elif ":down" in name:  # the waveform shortened by f before the model
        from ..modules.input_downsample import InputDownsampler

        base, factor, method = downsampling(name)
        model, inner = _plugin_model(base)
        # a child, so .to(device) moves it too, named as a CTC model names it: ``precision`` keeps it in
        # fp32 before this plugin's extractor, as a CTC model's. Called directly, not through the
        # model's forward: the waveform is cast to the downsampler's own format here
        model.input_downsampler = down = InputDownsampler(method, factor)
        forward = lambda x: inner(down(x.to(_format_of(down, x.dtype)), None)[0])  # noqa: E731
    elif "@" in name:  # St-SEW at a fixed operating point, or a CIF model at a lambda
        base, point = name.split("@", 1)
        model, forward = _plugin_model(base)
        if getattr(model, "cif", None) is not None:
            model.cif.set_lambda(_cif_lambda(model, forward, name, point))
        elif hasattr(model.encoder, "set_operating_point"):
            model.encoder.set_operating_point(point)
        else:
            raise ValueError(f"{name}: '@' takes a St-SEW operating point or a CIF lambda; {base} has neither")
    else:
        if name not in available_models():
            raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
        model, forward = _plugin_model(name)
        if getattr(model, "cif", None) is not None:
            raise ValueError(f"{name} samples its CIF lambda: name one, e.g. {name}@1.0")
    return model.eval(), forward


def _format_of(module: torch.nn.Module, default: torch.dtype) -> torch.dtype:
    """The floating-point format of ``module``'s parameters and buffers (``default`` without any)."""
    return next((t.dtype for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()), default)


def _onnx_model(name: str):
    """The row ``NAME`` of ``NAME:onnx`` as an onnxruntime session: (the PyTorch model, forward). The
    forward's ``torch_forward`` is the PyTorch row's, for the MAC count."""
    import tempfile

    import numpy as np

    from ..interop import onnx as export

    base = name[: -len(":onnx")]
    if base.startswith("hf:") or ":" in base:
        raise ValueError(f"{name}: ':onnx' takes a model name or a St-SEW operating point, e.g. sew_d_mid:onnx, "
                         "st_sew_base@2,2,1:onnx")
    model, torch_forward = build(base)
    try:
        graph = export.Graph(export.prepare_encoder(model)).eval()
    except export.ExportError as err:
        raise ValueError(f"{name}: {err}") from None
    with tempfile.TemporaryDirectory(prefix="sew_bench_onnx_") as folder:
        path = export.export_graph(graph, Path(folder) / f"{base}.onnx")
        session = export.session(path, torch.get_num_threads())

    def forward(x):
        mask = np.zeros(tuple(x.shape), dtype=bool)
        return session.run(export.OUTPUT_NAMES[:1], {"source": x.numpy(), "padding_mask": mask})[0]

    with torch.no_grad():  # fill the caches the PyTorch row fills in its warm-up (SEW-D's position tables)
        torch_forward(torch.zeros(1, 16000))
    forward.torch_forward = torch_forward
    return model, forward


def downsampling(name: str) -> Tuple[str, int, str]:
    """``NAME:down{f}{method}`` -> (NAME, f, method), refusing a malformed row name."""
    from ..modules.input_downsample import FACTORS, METHODS

    base, _, spec = name.partition(":down")
    if not spec[:1].isdigit() or int(spec[0]) not in FACTORS or spec[1:] not in METHODS:
        raise ValueError(f"{name}: expected NAME:down{{f}}{{method}} with f in {FACTORS} and method in {tuple(METHODS)}, "
                         "e.g. w2v2_base:down2resample")
    return base, int(spec[0]), spec[1:]


def _cif_lambda(model, forward: Callable, name: str, point: str) -> float:
    """The lambda of a ``NAME@L`` or ``NAME@Pms`` row."""
    try:
        if point.endswith("ms"):
            return lambda_for_period(model, forward, float(point[:-2]))
        return float(point)
    except ValueError:
        raise ValueError(f"{name}: expected a CIF lambda (e.g. @1.0) or a mean frame period (e.g. @90ms)") from None


def lambda_for_period(model, forward: Callable, period_ms: float, seconds: float = 10.0) -> float:
    """The CIF lambda whose mean frame period on ``seconds`` of noise is ``period_ms`` (bisection:
    the period grows with lambda)."""
    x = torch.randn(1, int(16000 * seconds), generator=torch.Generator().manual_seed(0))
    model.eval()
    low, high = 0.0, 2.0 - 1e-6
    for _ in range(30):
        middle = (low + high) / 2
        model.cif.set_lambda(middle)
        if cif_period_ms(forward, x) < period_ms:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def count_macs(model: torch.nn.Module, forward: Callable, x: torch.Tensor) -> float:
    """Multiply-accumulates of one forward, counted by torch's FlopCounterMode (FLOPs / 2)."""
    return mac_counts(model, forward, x)["Global"]


def context_macs(model: torch.nn.Module, counts: Dict[str, float]) -> float:
    """MACs of the context network: the module ``encoder`` and, for CIF models, ``cif``."""
    root = type(model).__name__
    return counts.get(f"{root}.encoder", 0.0) + counts.get(f"{root}.cif", 0.0)


def cif_period_ms(forward: Callable, x: torch.Tensor) -> float:
    """The mean frame period a CIF model's ``forward`` compresses ``x`` to."""
    from ..modules.side_outputs import collecting

    with torch.no_grad(), collecting() as reported:
        forward(x)
    return reported["cif"].frame_period_ms


def frame_period_ms(model: torch.nn.Module, forward: Callable, x: torch.Tensor, name: str = "") -> float:
    """Audio per frame the transformer runs on: the model's frame period (20 ms times the squeeze;
    transformers models: their config's squeeze factor; fairseq's wav2vec 2.0: 20 ms) or, for CIF,
    its mean period on ``x``, times the input downsampling of a ``:down{f}`` row."""
    downsampled = downsampling(name)[1] if ":down" in name else 1
    if getattr(model, "cif", None) is not None:
        return cif_period_ms(forward, x) * downsampled
    if hasattr(model, "context_period_ms"):
        return model.context_period_ms() * downsampled
    squeeze = getattr(getattr(model, "config", None), "squeeze_factor", None) or 1  # transformers models
    return 20.0 * squeeze * downsampled


def mac_counts(model: torch.nn.Module, forward: Callable, x: torch.Tensor) -> Dict[str, float]:
    """Multiply-accumulates of one forward per module path (``Global``: all), by FlopCounterMode.

    Fused CPU attention, int8 products (``Int8Linear``'s ``torch._int_mm`` or oneDNN's
    ``qlinear_pointwise``) and products with their GELU fused (``modules.onednn``) are not in
    torch's table: attention is counted with torch's
    own SDPA formula, convolutions with its convolution formula, an (M, K) x (K, N) product as
    M * K * N. transformers' weight-norm parametrization breaks the counter, so it is folded first.
    """
    from torch.nn.utils import parametrize
    from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_flop_count

    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)

    def cpu_flash(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    def int8_product(a_shape, b_shape, *args, out_shape=None, **kwargs):  # shapes: the counter passes those
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]

    def packed_int8_product(x_shape, x_scale, x_zero_point, w_shape, *args, out_shape=None, **kwargs):
        return 2 * math.prod(x_shape) * w_shape[1]  # (..., K) x the packed (K, N)

    def linear_product(x_shape, *args, out_shape=None, **kwargs):  # (..., K) -> (..., N), either overload
        return 2 * math.prod(out_shape) * x_shape[-1]

    def convolution(x_shape, w_shape, *args, out_shape=None, **kwargs):
        return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash,
               torch.ops.aten._int_mm: int8_product}
    if hasattr(torch.ops.onednn, "qlinear_pointwise"):
        mapping[torch.ops.onednn.qlinear_pointwise] = packed_int8_product
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        mapping.update({torch.ops.mkldnn._linear_pointwise: linear_product,
                        torch.ops.mkldnn._convolution_pointwise: convolution})
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        forward(x)
    return {name: sum(ops.values()) / 2 for name, ops in counter.get_flop_counts().items()}


def peak_memory_bytes(forward: Callable, x: torch.Tensor) -> int:
    """Peak bytes allocated by tensors during one forward (above what existed before it)."""
    if x.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        with torch.no_grad():
            forward(x)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        forward(x)
    deltas = sorted(
        (e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
        for e in prof.events()
    )
    current = peak = 0
    for _, delta in deltas:
        current += delta
        peak = max(peak, current)
    return peak


def _timed(forward: Callable, x: torch.Tensor) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        forward(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


class GemmReference:
    """The machine's matrix-product rate at one format, timed as a slot of the rows' rotation.

    Measured apart from the rows (a best-of-N before or after them), the rate and the rows would
    see different moments of a machine whose speed drifts (1.8x within minutes has been seen on
    shared CPUs): timed in the same rotation, both see the same ones. A slot runs as many
    (size, size) x (size, size) products as fill ``slot_s`` (counted at warm-up); ``int8`` runs an
    ``Int8Linear`` layer, what int8 rows run, its per-row quantization included.
    """

    def __init__(self, dtype: str, device: str = "cpu", size: int = 2048, slot_s: float = 0.05):
        x = torch.randn(size, size, device=device)
        if dtype == "int8":
            layer = set_precision(torch.nn.Sequential(torch.nn.Linear(size, size, bias=False)).eval(), "int8")
            self.product = lambda _: layer(x)  # noqa: E731
        else:
            a, b = x.to(DTYPES[dtype]), torch.randn(size, size, device=device, dtype=DTYPES[dtype])
            self.product = lambda _: a @ b  # noqa: E731
        self.dtype, self.x, self.flop, self.slot_s, self.count = dtype, x, 2 * size**3, slot_s, 1

    def warm_up(self) -> None:
        self.count = max(1, math.ceil(self.slot_s / self.seconds()))

    def seconds(self) -> float:
        """Seconds per product, over one slot."""
        return _timed(lambda x: [self.product(x) for _ in range(self.count)], self.x) / self.count


AUTOCAST = {"autocast-bf16": "bf16", "autocast-fp16": "fp16"}


def row_format(name: str, default: str) -> Tuple[str, str, bool]:
    """``(base name, dtype, autocast)`` of a row: ``NAME:DTYPE`` (``precision.DTYPES``) runs in that
    format, ``NAME:autocast-bf16`` / ``-fp16`` in fp32 under autocast to it, ``NAME`` in ``default``."""
    base, _, suffix = name.rpartition(":")
    formats = set(DTYPES) | set(AUTOCAST)
    if formats & set(base.split(":")):
        raise ValueError(f"{name}: a row names one format, as its last suffix (e.g. sew_d_mid:exit12:bf16)")
    if base and suffix in DTYPES:
        return base, suffix, False
    if base and suffix in AUTOCAST:
        return base, AUTOCAST[suffix], True
    return name, default, False


@dataclass
class Prepared:
    """A row ready to time: its model in its dtype, its forward, and the context it runs in
    (autocast for ``:autocast-*`` rows)."""

    name: str  # without the format suffix
    model: torch.nn.Module
    forward: Callable
    dtype: str
    autocast: bool

    def context(self):
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(next(self.model.parameters()).device.type, dtype=DTYPES[self.dtype])

    @property
    def onnx(self) -> bool:
        return hasattr(self.forward, "torch_forward")

    @property
    def torch_forward(self) -> Callable:
        """The PyTorch forward of the row: an ``:onnx`` row's model run by torch (what it computes)."""
        return self.forward.torch_forward if self.onnx else self.forward

    def macs(self, x: torch.Tensor) -> Dict[str, float]:
        """``mac_counts`` of the forward on ``x`` (under its autocast, for ``:autocast-*`` rows)."""
        with self.context():
            return mac_counts(self.model, self.torch_forward, x)


def prepare(name: str, dtype: str, device: str) -> Prepared:
    """Build row ``name`` and convert it to its dtype (``row_format``) once (``precision``), or
    leave it fp32 for autocast, which casts the weights at every call."""
    base, dtype, autocast = row_format(name, dtype)
    refuse_int8_off_cpu(dtype, device, name)
    onnx = base.endswith(":onnx")
    if onnx and (device != "cpu" or dtype != "fp32"):
        raise ValueError(f"{name}: ':onnx' rows run in onnxruntime on the CPU in fp32: use --device cpu --dtype fp32")
    model, forward = build(base)
    model.to(device)
    if not (onnx or autocast):
        set_precision(model, dtype)
    return Prepared(base, model, forward, dtype, autocast)


def run(models: List[str], seconds: List[float], batch_sizes: List[int], device: str = "cpu",
        dtype: str = "fp32", repeat: int = 5, warmup: int = 1, baseline: str = "w2v2_base",
        log: Callable[[str], None] = print, peak: bool = False) -> List[Row]:
    """Every row at every (seconds, batch size), in its format (``row_format``; ``dtype`` for rows
    that name none). With ``peak``, a ``GemmReference`` of each format the rows run in is timed
    in the same rotation, and each row gets its share of the one of its format (``Row.at_peak``)."""
    if baseline not in models:
        log(f"adding the baseline row {baseline} (--baseline)")
        models = models + [baseline]
    try:
        check_device(device)
    except ValueError as err:
        raise ValueError(f"--device {err}") from None
    built: Dict[str, Prepared] = {}
    for name in models:
        log(f"building {name}")
        built[name] = prepare(name, dtype, device)

    references = {f"GEMM {f}": GemmReference(f, device) for f in dict.fromkeys(b.dtype for b in built.values())} if peak else {}

    def timed(name, x):
        if name in references:
            return references[name].seconds()
        with built[name].context():
            return _timed(built[name].forward, x)

    rows = []
    slots = models + list(references)
    for secs, bsz in itertools.product(seconds, batch_sizes):
        x = torch.randn(bsz, int(16000 * secs), device=device)
        times: Dict[str, List[float]] = {name: [] for name in slots}
        for name in models:
            for _ in range(warmup):
                timed(name, x)
        for reference in references.values():
            reference.warm_up()
        for r in range(repeat):
            order = slots[r % len(slots):] + slots[: r % len(slots)]
            for name in order:
                times[name].append(timed(name, x))
        for name in models:
            row = built[name]
            med = statistics.median(times[name])
            speedups = paired(times[baseline], times[name])
            with row.context():  # the forward that was timed: half-precision paths and caches too
                memory = float("nan") if row.onnx else peak_memory_bytes(row.forward, x)
                period = frame_period_ms(row.model, row.torch_forward, x, row.name)
            macs = row.macs(x)
            flops = 2 * macs["Global"] / med
            rows.append(Row(
                name, bsz, secs, parameter_count(row.model) / 1e6, 1000 * med,
                1000 * min(times[name]), 1000 * max(times[name]), med / (bsz * secs), statistics.median(speedups),
                macs["Global"] / 1e9, memory / 2**20, context_macs(row.model, macs) / 1e9, period,
                flops / 1e9, dtype=f"autocast-{row.dtype}" if row.autocast else row.dtype,
                speedup_min=min(speedups), speedup_max=max(speedups),
            ))
            if references:  # the row's FLOP/s over the GEMM rate, each rotation's pair (``paired``)
                reference, gemm = references[f"GEMM {row.dtype}"], times[f"GEMM {row.dtype}"]
                shares = paired([2 * macs["Global"] / reference.flop * t for t in gemm], times[name])
                rows[-1].at_peak(reference.flop / statistics.median(gemm), statistics.median(shares))
            log(f"{name} batch {bsz} {secs:g} s: {1000 * med:.0f} ms, x{rows[-1].speedup:.2f} vs {baseline}")
    return rows


def _spread(row: Row) -> str:
    """`` (min-max)`` of a row's speed-up over the rotations, where they differ."""
    if row.speedup_min is None or row.speedup_min == row.speedup_max:
        return ""
    return f" ({row.speedup_min:.2f}-{row.speedup_max:.2f})"


def to_markdown(rows: List[Row], baseline: str) -> str:
    head = ("| model | batch | audio (s) | params (M) | forward median (ms) | min-max (ms) | RTF | "
            f"speed-up vs {baseline} | GMACs | context GMACs | frame ms | peak memory (MB) | GFLOP/s | "
            "GEMM rate (GFLOP/s) | of GEMM rate |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r.model} | {r.batch} | {r.seconds:g} | {r.params_m:.1f} | {r.median_ms:.0f} | "
        f"{r.min_ms:.0f}-{r.max_ms:.0f} | {r.rtf:.4f} | {r.speedup:.2f}x{_spread(r)} | {r.gmacs:.1f} | "
        f"{r.context_gmacs:.1f} | {r.frame_ms:.0f} | {r.peak_mb:.0f} | {r.gflops:.0f} | "
        f"{'-' if r.gemm_gflops is None else f'{r.gemm_gflops:.0f} ({r.format})'} | "
        f"{'-' if r.peak_share is None else f'{100 * r.peak_share:.0f}%'} |\n"
        for r in rows
    )


def plot(rows: List[Row], path: Path, wer: Dict[str, float] = None) -> None:
    """Forward time against GMACs, or, given WERs, WER against forward time; one colour per setting."""
    from .reports import scatter_png

    def series(r):
        return f"batch {r.batch}, {r.seconds:g} s"

    if wer:
        points = [(series(r), r.model, r.median_ms, 100 * wer[r.model]) for r in rows if r.model in wer]
        scatter_png(points, path, "forward time, median (ms)", "WER (%)")
    else:
        points = [(series(r), r.model, r.gmacs, r.median_ms) for r in rows]
        scatter_png(points, path, "multiply-accumulates (G)", "forward time, median (ms)")
