"""The measuring parts of `sew bench` (the figures themselves come from the benchmark, not tests)."""

import torch
import torch.nn.functional as F

from sew_plugin.bench import Row, available_models, count_macs, peak_memory_bytes, to_markdown


def test_macs_are_counted_including_fused_cpu_attention():
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(5, 10, 64)
    assert count_macs(linear, linear, x) == 5 * 10 * 64 * 32

    q = torch.randn(2, 4, 50, 16)

    def attention(_):
        return F.scaled_dot_product_attention(q, q, q)

    # QK^T and AV: 2 * B * H * L * L * d multiply-accumulates
    assert count_macs(torch.nn.Module(), attention, q) == 2 * 2 * 4 * 50 * 50 * 16


def test_macs_of_weight_normed_transformers_modules_are_counted():
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(4, 8, 3), name="weight", dim=2)
    x = torch.randn(1, 4, 20)
    assert count_macs(conv, conv, x) == 8 * 4 * 3 * 18


def test_peak_memory_follows_live_tensors():
    x = torch.randn(500, 500)  # 1 MB per (500, 500) float32 tensor

    def forward(x):
        a = x @ x
        b = a @ a
        del a
        c = b + 1  # b and c alive: 2 MB; a and b were too
        return c

    peak = peak_memory_bytes(forward, x)
    assert 2_000_000 <= peak < 3_000_000


def test_markdown_table_and_model_names():
    row = Row("sew_d_mid", 1, 10.0, 78.8, 400.0, 390.0, 420.0, 0.04, 2.5, 30.0, 100.0)
    table = to_markdown([row], "w2v2_base")
    assert "| sew_d_mid | 1 | 10 | 78.8 | 400 | 390-420 | 0.0400 | 2.50x | 30.0 | 100 |" in table
    names = available_models()
    assert {"w2v2_base", "sew_d_mid", "hf:sew_d_mid", "sew_tiny", "hf:sew_tiny"} <= set(names)
