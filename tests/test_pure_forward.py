"""Forwards in eval mode change nothing on the modules (the operating point, squeeze factor and
pooling travel with the data), and a fixed model traces with ``torch.jit.trace`` into a graph that
serves other lengths and batch sizes than the traced one."""

import pytest
import torch
from torch.nn.utils.weight_norm import WeightNorm

from sew_plugin.interop import onnx as export

from conftest import waveform_batch
from helpers import ctc_model

# memoization whose contents are a function of the weights and the length, kept across forwards by design
CACHES = {"_positions", "_table", "_tables", "_stacked"}
# nn.Module's own dicts: parameters and buffers are compared as tensors below, submodules by name
TORCH_CONTAINERS = {"_parameters", "_buffers", "_modules"}
KINDS = [("sew", {}), ("sew_d", {}), ("st_sew", {"operating_point": "2,2,1"}), ("st_sew", {}), ("wav2vec2", {}),
         ("sew", {"input_downsample": "resample", "input_downsample_factor": 2}),
         ("sew_cif", {"cif_lambda": 1.0}), ("sew", {"exit_layers": "1"}), ("sew_d", {"exit_layers": "1"})]


def attributes(model) -> dict:
    """Every module's non-tensor attributes and its parameter and buffer tensors (by identity and value)."""
    snapshot = {}
    for name, module in model.named_modules():
        recomputed = {h.name for h in module._forward_pre_hooks.values() if isinstance(h, WeightNorm)}
        plain = {k: v for k, v in vars(module).items()
                 if k not in CACHES | recomputed | TORCH_CONTAINERS and not torch.is_tensor(v)}
        tensors = {k: (id(t), t.detach().clone()) for k, t in [*module._parameters.items(), *module._buffers.items()]
                   if t is not None}
        snapshot[name] = (repr(plain), tensors)
    return snapshot


@pytest.mark.parametrize("kind, ctc", KINDS)
def test_an_eval_forward_changes_no_module_attribute(kind, ctc):
    model = ctc_model(kind, **ctc)
    if ctc.get("exit_layers"):  # and under an exit policy, which narrows the batch between layers
        from sew_plugin.inference.settings import set_exit_policy

        set_exit_policy(model, "entropy", threshold=1.0)
    source, padding = waveform_batch([9000, 6400, 3000])
    before = attributes(model)
    with torch.no_grad():
        model(source=source, padding_mask=padding)
        model(source=source[:2, :7000], padding_mask=padding[:2, :7000])
        model(source=source, padding_mask=padding)
    after = attributes(model)
    assert before.keys() == after.keys()
    for name in before:
        assert before[name][0] == after[name][0], name
        for key, (ident, value) in before[name][1].items():
            assert after[name][1][key][0] == ident and torch.equal(after[name][1][key][1], value), f"{name}.{key}"


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the values each module keeps fixed on purpose
@pytest.mark.parametrize("kind, ctc", [k for k in KINDS[:5] if k != ("st_sew", {})])
def test_a_fixed_model_traces_into_a_length_and_batch_generic_graph(kind, ctc):
    model = ctc_model(kind, **ctc)
    graph = export.ctc_graph(model)
    with torch.no_grad():
        traced = torch.jit.trace(graph, waveform_batch([13000, 11000]), check_trace=False)
        for lengths in ([9000], [7000, 19000, 26000], [16000, 16000]):
            source, padding = waveform_batch(lengths, seed=3)
            logits, frames = traced(source, padding)
            expected, expected_frames = export.torch_logits(model, source, padding)
            assert torch.equal(frames, expected_frames) and logits.shape == expected.shape
            valid = torch.arange(logits.size(1))[None, :] < frames[:, None]
            assert (logits - expected).abs()[valid].max() < 1e-4, lengths
