"""``sew export-onnx``: a fine-tuned CTC checkpoint as an ONNX graph with dynamic batch and length.

    sew export-onnx checkpoints/checkpoint_best.pt model.onnx
    sew export-onnx st_sew_ctc.pt model_221.onnx --operating-point 2,2,1

Exported: ``sew_ctc`` checkpoints with SEW, SEW-D or St-SEW encoders (with or without input
downsampling), and fairseq's own ``wav2vec_ctc``. The graph's interface:

- inputs ``source`` (B, S) float32, the zero-padded 16 kHz waveforms, and ``padding_mask`` (B, S)
  bool, True at padded samples (the convention of the PyTorch model and ``sew infer``). Only each
  row's count of valid samples is read from the mask, so padding must be at the end of a row.
  Checkpoints fine-tuned with ``task.normalize`` expect every utterance layer-normalised over its
  own samples before padding (``normalize`` in the graph's metadata says which);
- outputs ``logits`` (B, T, V) float32, the CTC head's scores at the output frame rate (20 ms; 40 ms
  with ``input_downsample_factor`` 2 ...), with the checkpoint's ``blank_weight`` applied, and
  ``lengths`` (B,) int64, the valid frames of each row (frames at and after it are padding).

Metadata (``metadata_props``): ``vocabulary`` (the target dictionary's symbols, space-separated,
index 0 first), ``blank_index``, ``normalize``, ``frame_ms``, ``operating_point``, ``model``.

Why an input mask rather than lengths: the mask is what the model itself takes, so the same batch
goes to both; both export equally robustly (the graph reduces the mask to lengths first).

How it is exported: torch's TorchScript-based exporter (``dynamo=False``), tracing the model's own
modules on a copy (``prepare_encoder``: weight norm folded into plain weights, fairseq's wav2vec 2.0
encoder given this plugin's layer-wise steps). The modules take their trace-safe path when traced
(``torch.jit.is_tracing()``), each computing the same function as in eager mode:

- the exact integer frame count of every row is always computed (``feature_extractor.output_frames``,
  what ``sew_plugin.modules.frame_mask`` gives eager models), where eager fairseq chooses its frame
  mask by ``padding_mask.any()``;
- the squeeze crops the strided positional convolution to the pooled length ``floor(T / s)`` and
  the upsampler always pads to the 20 ms length (``sew_plugin.modules.squeeze``), in eager mode too;
- fairseq's ``pad_to_multiple`` (Python arithmetic on the length; the frames it adds are masked, so
  it only matters for speed) is skipped;
- SEW-D's relative-position bucket index covers the whole table, built from the length inside the
  graph, nothing is cached, and attention runs over the whole batch at once (eager: the rows a
  length reaches, cached per length, in cache-sized groups of utterances);
- the feature extractor runs as fairseq's (no cache-sized groups of utterances);
- the upsampler selects zeros for padded frames (in eager mode too): onnxruntime's softmax gives
  NaN for a fully masked attention row (an utterance with no squeezed frame), and NaN * 0 is NaN.

One fix is in the exporter itself, for the duration of the export: it writes Python's ``//``
(``aten::floor_divide``) as truncating division, wrong for negative integers; St-SEW's pooling takes
``ceil(L / p)`` as ``-(-L // p)`` and would drop a window of every odd length. ``//`` is written as
floor division instead.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``, with ``onnxscript``) was tried on
torch 2.13: ``torch.export`` refuses the data-dependent shapes these models have by design (the
frame lengths come from the padding mask and size the squeeze, the pooling and the masks:
``GuardOnDataDependentSymNode``) and SEW-D's weight caches (``data_ptr``); only the wav2vec 2.0
encoder went through (7e-5 max abs difference, 5e-6 here). The
TorchScript exporter needs only ``onnx``.

Refused, with the reason: early-exit models (which layers run depends on each utterance's
posteriors at run time) and CIF models (the compressed length comes from an integrate-and-fire
loop over the frames); St-SEW without a fixed operating point (it would sample one per forward).

After writing, the graph is run with onnxruntime (CPU) on two batches of other lengths and batch
sizes than the trace's (one row; three padded rows), and compared with PyTorch (``--tolerance``, default 5e-4 max abs difference
over valid frames).
"""

import contextlib
import copy
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from . import with_blank_weight

SAMPLE_RATE = 16000
TRACE_SECONDS = (1.3, 1.1)  # the batch the graph is traced on (the second row padded)
CHECK_SECONDS = (0.7, 1.9, 2.6)  # the batch it is checked on, other length and batch size
OPSET = 17
TOLERANCE = 5e-4  # fp32 runtimes differ most through the GroupNorm front end: up to 1.1e-4 seen
INPUT_NAMES = ["source", "padding_mask"]
OUTPUT_NAMES = ["logits", "lengths"]
DYNAMIC_AXES = {
    "source": {0: "batch", 1: "samples"},
    "padding_mask": {0: "batch", 1: "samples"},
    "logits": {0: "batch", 1: "frames"},
    "lengths": {0: "batch"},
}


class ExportError(ValueError):
    """A model this exporter cannot turn into an equivalent ONNX graph (the message says why)."""


# ---- what can be exported ---------------------------------------------------------------------


def check_encoder(w2v) -> None:
    """Refuse, naming why, an encoder whose ONNX graph would not compute what it computes."""
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Model

    from ..models.sew_ctc import SAMPLED_POINT

    if not isinstance(w2v, Wav2Vec2Model):
        raise ExportError(f"the encoder {type(w2v).__name__} is not a wav2vec 2.0-family model (SEW, SEW-D, "
                          "St-SEW or wav2vec 2.0)")
    if getattr(w2v, "cif", None) is not None:
        raise ExportError("CIF models cannot be exported: the compressed frames come from an integrate-and-fire "
                          "loop whose output length depends on the data, frame by frame")
    encoder = w2v.encoder
    if hasattr(encoder, "set_operating_point") and not encoder.fixed:
        raise ExportError(SAMPLED_POINT)
    if getattr(encoder, "layer_hook", None) is not None:
        raise ExportError("the encoder runs a hook after every layer (early exit), which decides per utterance "
                          "at run time")
    if getattr(w2v, "input_quantizer", None) is not None:
        raise ExportError("models with an input quantizer (quantize_input) are not supported")
    if getattr(w2v, "crop_seq_to_multiple", 1) != 1:
        raise ExportError(f"crop_seq_to_multiple={w2v.crop_seq_to_multiple} is not supported")


def check_exportable(model) -> None:
    """Refuse, naming why, a CTC model whose ONNX graph would not compute what it computes."""
    from ..checkpoint import require_ctc

    require_ctc(model, "export-onnx", ExportError)
    if getattr(model, "exit_runner", None) is not None:
        raise ExportError("early-exit models cannot be exported: which layers run is decided per utterance from "
                          "its posteriors at run time (data-dependent control flow), and an ONNX graph runs one "
                          "fixed sequence of layers")
    check_encoder(model.w2v_encoder.w2v_model)
    if getattr(model, "blank_mode", "add") not in ("add", "set"):
        raise ExportError(f"unknown blank_mode {model.blank_mode!r}")


# ---- a copy of the encoder that traces into a length- and batch-independent graph --------------


def _fold_weight_norm(model: nn.Module) -> None:
    """Replace weight norm (fairseq's hook or torch's parametrization) by the weight it computes."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.weight_norm import WeightNorm

    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, WeightNorm):
                torch.nn.utils.remove_weight_norm(module, hook.name)


def _deepcopy(module: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also copies modules under fairseq's weight-norm hook."""
    from torch.nn.utils.weight_norm import WeightNorm

    for sub in module.modules():
        for hook in sub._forward_pre_hooks.values():
            if isinstance(hook, WeightNorm):
                # the hook's last weight, recomputed at every forward; autograd's copy cannot be deep-copied
                setattr(sub, hook.name, getattr(sub, hook.name).detach())
    return copy.deepcopy(module)


def prepare_encoder(w2v) -> nn.Module:
    """A copy of a wav2vec 2.0-family encoder to trace (eval mode; ``w2v`` is left as it was): its
    weight norm folded into plain weights, no per-layer results kept, and fairseq's own
    ``TransformerEncoder`` given the layer-wise steps (``make_steppable``), whose ``begin`` traces."""
    from ..modules.layerwise import make_steppable

    check_encoder(w2v)
    w2v = _deepcopy(w2v).eval()
    _fold_weight_norm(w2v)
    if not hasattr(w2v.encoder, "squeeze_factor"):  # fairseq's wav2vec 2.0 encoder
        make_steppable(w2v.encoder)
    for module in w2v.modules():
        if hasattr(module, "keep_layer_results"):
            module.keep_layer_results = False
    return w2v


class Graph(nn.Module):
    """What is traced: ``(source, padding_mask) -> (logits (B, T, V), lengths (B,))``, as the eval-mode
    model computes them: the steps of fairseq's ``Wav2Vec2Model.forward(features_only=True, mask=False)``
    (extractor, layer norm, projection, encoder) on an encoder prepared by ``prepare_encoder``, with
    the exact frame mask and each row's valid samples for a masked GroupNorm, then the CTC head (``proj``;
    None: the encoder's (B, T, D) output), ``ctc_frames_per_step`` and ``blank_weight``. An input
    downsampler shortens the waveform first."""

    def __init__(self, w2v, proj: Optional[nn.Module] = None, downsampler: Optional[nn.Module] = None,
                 frames_per_step: int = 1, blank_weight: float = 0.0, blank_mode: str = "add"):
        from ..modules.feature_extractor import conv_layers_of

        super().__init__()
        self.w2v, self.proj, self.downsampler = w2v, proj, downsampler
        self.frames_per_step, self.blank_weight, self.blank_mode = frames_per_step, blank_weight, blank_mode
        self.conv_specs = conv_layers_of(w2v.feature_extractor)

    def forward(self, source: torch.Tensor, padding_mask: torch.Tensor):
        from ..modules.feature_extractor import output_frames
        from ..modules.masked_group_norm import valid_samples
        from ..modules.input_downsample import expand_ctc_frames
        from ..modules.squeeze import lengths_to_padding_mask

        w2v = self.w2v
        if self.downsampler is not None:
            source, padding_mask = self.downsampler(source, padding_mask)
        samples = (~padding_mask).long().sum(-1)
        frames = output_frames(samples, self.conv_specs)
        with valid_samples(samples=samples):  # a masked GroupNorm front end normalises each row over its own frames
            features = w2v.feature_extractor(source).transpose(1, 2)
        features = w2v.layer_norm(features)
        mask = lengths_to_padding_mask(frames, features.size(1))
        if w2v.post_extract_proj is not None:
            features = w2v.post_extract_proj(features)
        x, _ = w2v.encoder(features, padding_mask=mask)
        if self.proj is not None:
            x = self.proj(x)
        if self.frames_per_step > 1:
            x = expand_ctc_frames(x.transpose(0, 1), self.frames_per_step).transpose(0, 1)
            frames = frames * self.frames_per_step
        return with_blank_weight(x, self.blank_weight, self.blank_mode), frames


def ctc_graph(model) -> Graph:
    """The ``Graph`` of a fine-tuned CTC model (``sew_ctc`` or fairseq's ``wav2vec_ctc``)."""
    check_exportable(model)
    steps = getattr(getattr(model, "cfg", None), "ctc_frames_per_step", 1) or 1
    return Graph(prepare_encoder(model.w2v_encoder.w2v_model), model.w2v_encoder.proj,
                 getattr(model, "input_downsampler", None), steps, getattr(model, "blank_weight", 0.0),
                 getattr(model, "blank_mode", "add")).eval()


# ---- exporter fix ----------------------------------------------------------------------------


def _floor_divide(g, self, other):
    """``a // b`` as PyTorch computes it (rounding towards minus infinity). The TorchScript exporter
    writes ``aten::floor_divide`` as truncating division (its documented legacy behaviour), which
    differs for negative integers: St-SEW's ``mean_pool`` takes ``ceil(L / p)`` as ``-(-L // p)``, and
    the graph would pool odd lengths into one window too few."""
    from torch.onnx import symbolic_helper, symbolic_opset9

    if symbolic_helper._is_fp(self) or symbolic_helper._is_fp(other):
        return g.op("Floor", symbolic_opset9.true_divide(g, self, other))
    remainder = g.op("Mod", self, other, fmod_i=0)  # integer Mod takes the divisor's sign, as Python's %
    return g.op("Div", g.op("Sub", self, remainder), other)  # exact: the difference is a multiple


@contextlib.contextmanager
def _python_floor_division(opset: int):
    names = ("aten::floor_divide", "aten::floordiv")
    for name in names:
        torch.onnx.register_custom_op_symbolic(name, _floor_divide, opset)
    try:
        yield
    finally:
        for name in names:
            torch.onnx.unregister_custom_op_symbolic(name, opset)


# ---- export and check -------------------------------------------------------------------------


def waveform_batch(seconds: Sequence[float], seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded random (B, S) waveforms of ``seconds`` each and their (B, S) padding mask."""
    lengths = [int(round(s * SAMPLE_RATE)) for s in seconds]
    g = torch.Generator().manual_seed(seed)
    source = torch.zeros(len(lengths), max(lengths))
    padding = torch.ones(len(lengths), max(lengths), dtype=torch.bool)
    for i, n in enumerate(lengths):
        source[i, :n] = 0.1 * torch.randn(n, generator=g)
        padding[i, :n] = False
    return source, padding


def torch_logits(model, source: torch.Tensor, padding: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The eager model's (B, T, V) logits (``blank_weight`` applied) and (B,) valid frames."""
    with torch.no_grad():
        out = model(source=source, padding_mask=padding)
    logits = with_blank_weight(out["encoder_out"].transpose(0, 1), getattr(model, "blank_weight", 0),
                               getattr(model, "blank_mode", "add"))
    mask = out["padding_mask"]
    lengths = (~mask).long().sum(-1) if mask is not None else torch.full((logits.size(0),), logits.size(1))
    return logits, lengths


def export(model, path: Path, opset: int = OPSET, trace_seconds: Sequence[float] = TRACE_SECONDS,
           metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write the ONNX graph of a (fixed, exportable) CTC model to ``path``."""
    return export_graph(ctc_graph(model), path, opset, trace_seconds, metadata)


def export_graph(graph: Graph, path: Path, opset: int = OPSET, trace_seconds: Sequence[float] = TRACE_SECONDS,
                 metadata: Optional[Dict[str, str]] = None) -> Path:
    """Trace ``graph`` on a padded batch of ``trace_seconds`` and write it to ``path``."""
    import warnings

    import onnx

    inputs = waveform_batch(trace_seconds)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings(), _python_floor_division(opset):
        # the exporter's notes on Python values it records as constants, each checked by the copy's design
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        torch.onnx.export(graph, inputs, str(path), dynamo=False, opset_version=opset, input_names=INPUT_NAMES,
                          output_names=OUTPUT_NAMES, dynamic_axes=DYNAMIC_AXES, do_constant_folding=True)
    if metadata:
        proto = onnx.load(str(path))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.save(proto, str(path))
    return path


def session(path: Path, threads: int = 0):
    """An onnxruntime CPU session of the graph (``threads`` 0: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(sess, source: torch.Tensor, padding: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    logits, lengths = sess.run(OUTPUT_NAMES, {"source": source.numpy(), "padding_mask": padding.numpy()})
    return torch.from_numpy(logits), torch.from_numpy(lengths)


def max_abs_diff(model, sess, seconds: Sequence[float], seed: int = 1) -> float:
    """Largest |PyTorch - onnxruntime| logit over the valid frames of a padded batch of ``seconds``;
    the frame counts must agree exactly (an ``AssertionError`` says otherwise)."""
    source, padding = waveform_batch(seconds, seed)
    expected, expected_lengths = torch_logits(model, source, padding)
    logits, lengths = run_session(sess, source, padding)
    if logits.shape != expected.shape or not torch.equal(lengths, expected_lengths):
        raise AssertionError(f"onnxruntime gave logits {tuple(logits.shape)} with lengths {lengths.tolist()}, "
                             f"PyTorch {tuple(expected.shape)} with {expected_lengths.tolist()}")
    valid = torch.arange(logits.size(1))[None, :] < lengths[:, None]
    return float((logits - expected).abs()[valid].max())


def metadata_of(model, task=None, cfg=None, point: Optional[str] = None) -> Dict[str, str]:
    from ..modules.masking import class_name

    point = point or getattr(getattr(model, "cfg", None), "operating_point", None)  # else fixed in fine-tuning
    meta = {"producer": "sew_plugin export-onnx", "model": class_name(model.w2v_encoder.w2v_model),
            "operating_point": point or "", "inputs": "source (B, S) float32; padding_mask (B, S) bool, True = padding",
            "outputs": "logits (B, T, V) float32; lengths (B,) int64 valid frames"}
    meta["frame_ms"] = f"{model.frame_period_ms() if hasattr(model, 'frame_period_ms') else 20.0:g}"
    if task is not None and getattr(task, "target_dictionary", None) is not None:
        meta["vocabulary"] = " ".join(task.target_dictionary.symbols)
        meta["blank_index"] = "0"
    if cfg is not None:
        meta["normalize"] = str(bool(cfg.task.get("normalize", False))).lower()
    return meta


def check_against_pytorch(model, path: Path) -> Dict[Tuple[float, ...], float]:
    """Run the graph at ``path`` in onnxruntime on two batches the trace never saw (one row, and
    ``CHECK_SECONDS``): {seconds of each row: max abs logit difference to PyTorch over valid frames}."""
    sess = session(path)
    return {seconds: max_abs_diff(model, sess, seconds) for seconds in ((0.9,), CHECK_SECONDS)}
