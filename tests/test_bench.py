"""The measuring parts of `sew bench` (the figures themselves come from the benchmark, not tests)."""

import csv
import re

import pytest
import torch
import torch.nn.functional as F

from sew_plugin.inference.bench import Row, available_models, count_macs, peak_memory_bytes, to_markdown


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
    assert "| sew_d_mid | 1 | 10 | 78.8 | 400 | 390-420 | 0.0400 | 2.50x | 30.0 | 0.0 | 20 | 100 |" in table
    names = available_models()
    assert {"w2v2_base", "sew_d_mid", "hf:sew_d_mid", "sew_tiny", "hf:sew_tiny"} <= set(names)


def test_speed_ups_pair_the_times_of_each_rotation(tiny_presets, monkeypatch):
    from sew_plugin.inference import bench

    # the machine drifts: rotation 2 runs at a third of rotation 1's speed, the row twice as fast as
    # the baseline in both; in rotation 3 the row caught a fast moment. The row's median (50 ms,
    # rotation 1) and the baseline's (200 ms, rotation 3) would give 4x; each rotation's pair: 2x, 2x, 6.67x
    times = {"sew_tiny": [100, 300, 200], "sew_d_tiny": [50, 150, 30]}
    calls = {name: iter(t) for name, t in times.items()}
    order = []

    def timed(forward, x):
        name = forward.row
        order.append(name)
        return next(calls[name]) / 1000

    real_prepare = bench.prepare

    def prepare(name, dtype, device):
        prepared = real_prepare(name, dtype, device)
        forward = prepared.forward
        prepared.forward = lambda x: forward(x)
        prepared.forward.row = name
        return prepared

    # the GEMM slot drifts with the baseline: the row's share of its rate is the same in rotations 1
    # and 2 (0.2 x 2 MACs / flop); the two medians (20 ms of GEMM, 50 ms of the row) would give 0.4
    gemm_s = iter([0.010, 0.030, 0.020])
    monkeypatch.setattr(bench, "_timed", timed)
    monkeypatch.setattr(bench, "prepare", prepare)
    monkeypatch.setattr(bench.GemmReference, "warm_up", lambda self: None)
    monkeypatch.setattr(bench.GemmReference, "seconds", lambda self: next(gemm_s))
    rows = {r.model: r for r in bench.run(["sew_d_tiny", "sew_tiny"], [0.2], [1], repeat=3, warmup=0,
                                          baseline="sew_tiny", log=lambda _: None, peak=True)}
    assert len(order) == 6 and order[0] != order[2]  # one slot each per rotation, the order rotating
    row = rows["sew_d_tiny"]
    assert row.median_ms == 50 and rows["sew_tiny"].median_ms == 200
    assert row.speedup == 2.0 and (row.speedup_min, row.speedup_max) == (2.0, 2 / 0.3)
    assert "| 2.00x (2.00-6.67) |" in bench.to_markdown([row], "sew_tiny")
    flop = 2 * 2048**3
    assert row.gemm_gflops == pytest.approx(flop / 0.020 / 1e9)  # the median rate
    assert row.peak_share == pytest.approx(2 * row.gmacs * 1e9 / flop * 0.2)


def test_sew_bench_writes_table_csv_and_plots_with_ratios_to_the_named_baseline(tmp_path, capsys):
    import csv
    import json

    from sew_plugin.cli import main as sew

    (tmp_path / "summary.json").write_text(json.dumps({"wer": 0.25}))
    argv = ["bench", "--models", "sew_d_tiny", "--baseline", "sew_tiny", "--seconds", "0.5",
            "--batch-size", "1", "--repeat", "2", "--warmup", "0", "--threads", "1", "--out", str(tmp_path / "out")]
    assert sew(argv) == 0
    assert "adding the baseline row sew_tiny (--baseline)" in capsys.readouterr().out
    with open(tmp_path / "out" / "bench.csv") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"sew_d_tiny", "sew_tiny"}
    base = rows["sew_tiny"]
    for r in rows.values():  # the median of two rotations' ratios: within their spread, which the times bound
        low, high = float(r["speedup_min"]), float(r["speedup_max"])
        assert low <= float(r["speedup"]) <= high
        assert float(base["min_ms"]) / float(r["max_ms"]) - 1e-9 <= low <= high <= float(base["max_ms"]) / float(r["min_ms"]) + 1e-9
    assert float(base["speedup"]) == float(base["speedup_min"]) == float(base["speedup_max"]) == 1.0
    assert "speed-up vs sew_tiny" in (tmp_path / "out" / "bench.md").read_text()
    png = (tmp_path / "out" / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    # a rerun into the same --out is refused before the measurement, unless --overwrite
    with pytest.raises(SystemExit, match="bench.md, .*bench.png already exist; pass --overwrite"):
        sew(argv)
    argv.append("--overwrite")
    # WER against time: the WER comes from sew infer's summary.json; a name not benchmarked is refused
    assert sew(argv + ["--wer", f"sew_tiny={tmp_path / 'summary.json'}"]) == 0
    assert (tmp_path / "out" / "bench.png").read_bytes() != png
    with pytest.raises(SystemExit, match="not benchmarked: w2v2_base"):
        sew(argv + ["--wer", f"w2v2_base={tmp_path / 'summary.json'}"])
    with pytest.raises(SystemExit, match="expected MODEL=path"):
        sew(argv + ["--wer", "sew_tiny"])


def test_early_exit_rows_stop_after_layer_k():
    from sew_plugin.inference.bench import build

    x = torch.randn(1, 16000)
    full_model, full = build("sew_d_tiny")
    half_model, half = build("sew_d_tiny:exit6")
    full_macs, half_macs = count_macs(full_model, full, x), count_macs(half_model, half, x)
    assert half(x).shape == full(x).shape
    assert 0.3 < half_macs / full_macs < 0.9  # 6 of 12 layers, the same front end and upsampler
    for k in ("0", "13", "six", "-1"):  # no layer 0 (it would be read as the last), none above 12
        with pytest.raises(ValueError, match=f"sew_d_tiny:exit{k}: ':exitK' takes a layer K from 1 to 12"):
            build(f"sew_d_tiny:exit{k}")


def test_cif_rows_by_lambda_and_by_frame_period():
    from omegaconf import OmegaConf

    from sew_plugin.inference.bench import build, context_macs, frame_period_ms, lambda_for_period, mac_counts
    from sew_plugin.models.sew import SEWConfig, SEWModel

    from conftest import TINY_SEW

    model, _ = build("w2v2_base_cif@1.25")
    assert model.cif.fixed_lambda == 1.25 and not model.training
    with pytest.raises(ValueError, match="w2v2_base_cif@1.0"):
        build("w2v2_base_cif")  # a sampled lambda would time a different model every repeat

    cfg = SEWConfig(**TINY_SEW, squeeze_factor=1, compressor="cif")
    tiny = SEWModel.build_model(OmegaConf.structured(cfg)).eval()
    forward = lambda x: tiny(x, mask=False, features_only=True)["x"]  # noqa: E731
    lam = lambda_for_period(tiny, forward, 80.0, seconds=4.0)
    tiny.cif.set_lambda(lam)
    x = torch.randn(1, 64000, generator=torch.Generator().manual_seed(0))  # the noise it was found on
    compressed = mac_counts(tiny, forward, x)
    assert abs(frame_period_ms(tiny, forward, x) - 80.0) < 5.0
    tiny.cif.set_lambda(0.0)
    full = mac_counts(tiny, forward, x)
    assert frame_period_ms(tiny, forward, x) == 20.0
    # the context network (encoder + CIF) shrinks with the frames; the CIF module and the front end do not
    assert compressed["SEWModel.cif"] == full["SEWModel.cif"]
    assert compressed["SEWModel.encoder"] < full["SEWModel.encoder"] / 3.5
    assert context_macs(tiny, full) == full["SEWModel.encoder"] + full["SEWModel.cif"]
    assert compressed["SEWModel.feature_extractor"] == full["SEWModel.feature_extractor"]


@pytest.mark.parametrize("method", ["conv", "avgpool", "resample"])
def test_downsampled_rows_shorten_the_input_before_the_model(method):
    from sew_plugin.inference.bench import build, frame_period_ms, prepare
    from sew_plugin.inference.precision import kept_in_fp32

    x = torch.randn(1, 32000)
    full_model, full = build("sew_tiny")
    down_model, down = build(f"sew_tiny:down2{method}")
    assert down(x).size(1) == full(x[:, ::2]).size(1)  # half the samples, half the frames
    assert 0.4 < count_macs(down_model, down, x) / count_macs(full_model, full, x) < 0.6
    assert frame_period_ms(down_model, down, x, f"sew_tiny:down2{method}") == 2 * frame_period_ms(full_model, full, x) == 80.0
    # in bf16 the downsampler stays fp32, as a CTC model's does (``precision.kept_in_fp32``)
    half = prepare(f"sew_tiny:down2{method}:bf16", "fp32", "cpu")
    assert all(t.dtype == torch.float32 for t in (*half.model.input_downsampler.parameters(),
                                                   *half.model.input_downsampler.buffers()))
    assert half.model.input_downsampler in kept_in_fp32(half.model)
    with torch.no_grad():
        assert torch.isfinite(half.forward(x).float()).all()


@pytest.mark.parametrize("name, message", [
    ("sew_tiny:down5conv", "sew_tiny:down5conv: expected NAME:down{f}{method}"),
    ("sew_tiny:down2pool", "sew_tiny:down2pool: expected NAME:down{f}{method}"),
    ("sew_tiny@2", "sew_tiny@2: '@' takes a St-SEW operating point or a CIF lambda; sew_tiny has neither"),
    ("w2v2_base_cif@fast", "w2v2_base_cif@fast: expected a CIF lambda"),
    ("w2v2_base_cif", "w2v2_base_cif samples its CIF lambda"),
])
def test_sew_bench_refuses_malformed_row_names(name, message):
    from sew_plugin.cli import main as sew

    with pytest.raises(SystemExit, match="sew bench: error: " + re.escape(message)):
        sew(["bench", "--models", name, "--baseline", name, "--seconds", "0.1", "--batch-size", "1"])


ROW_KINDS = ["sew_tiny", "sew_d_tiny", "w2v2_base", "w2v2_large", "hf:sew_tiny", "hf:sew_d_tiny",
             "st_sew_base@2,2,1", "sew_d_tiny:exit1", "w2v2_base_cif@1.0", "w2v2_base:down2conv",
             "w2v2_base:down3avgpool", "w2v2_base:down2resample"]


@pytest.mark.parametrize("name", ROW_KINDS)
def test_every_row_moves_whole_with_its_model(tiny_presets, name):
    """What ``--device cuda`` needs, checked without a GPU: ``run`` moves each row's module with
    ``.to()``, so a part of the forward left outside it (on the CPU, in fp32) would fail there. Moving to
    float64 fails the same way here."""
    from sew_plugin.inference.bench import build

    model, forward = build(name)
    model.to(torch.float64)
    with torch.no_grad():
        features = forward(torch.randn(2, 16000, dtype=torch.float64))
    assert features.dtype == torch.float64 and features.size(0) == 2


def timed_forwards(monkeypatch):
    """Spy on ``sew bench``'s timed forwards: for each, the row it belongs to, whether CPU autocast
    was on and at which dtype, the dtypes the linear layers computed in during it (``int8`` for
    ``Int8Linear``) and the dtypes of the row's parameters."""
    from sew_plugin.inference import bench
    from sew_plugin.inference.precision import kept_in_fp32
    from sew_plugin.modules.int8_linear import Int8Linear

    rows, calls = {}, []
    prepare, timed = bench.prepare, bench._timed

    def recording_prepare(name, dtype, device):
        row = prepare(name, dtype, device)
        rows[id(row.forward)] = (name, row.model)
        return row

    def recording_timed(forward, x):
        linear = set()

        def hook(module, inputs, output):
            if isinstance(module, torch.nn.Linear):
                linear.add(output.dtype)
            elif isinstance(module, Int8Linear):
                linear.add("int8")

        handle = torch.nn.modules.module.register_module_forward_hook(hook)
        try:
            seconds = timed(forward, x)
        finally:
            handle.remove()
        name, model = rows[id(forward)]
        # the parts precision keeps in fp32 (narrow convolutions, the waveform's block) aside
        narrow = {id(p) for m in kept_in_fp32(model) for p in m.parameters()}
        calls.append((name, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), linear,
                      {p.dtype for p in model.parameters() if id(p) not in narrow}))
        return seconds

    monkeypatch.setattr(bench, "prepare", recording_prepare)
    monkeypatch.setattr(bench, "_timed", recording_timed)
    return calls


def test_each_row_runs_in_its_format_with_the_fp32_macs(tiny_presets, monkeypatch):
    """``--dtype`` and a row's ``:DTYPE`` convert its weights once (no autocast: the parameters
    themselves are bf16, or the linear layers int8); ``:autocast-bf16`` keeps fp32 weights under
    autocast. Every format of a model has the MACs of its fp32 row."""
    from sew_plugin.inference.bench import run

    models = ["sew_d_tiny", "sew_d_tiny:bf16", "sew_d_tiny:int8", "sew_d_tiny:autocast-bf16",
              "st_sew_base@2,2,1", "w2v2_base:down2conv"]
    calls = timed_forwards(monkeypatch)
    rows = {r.model: r for r in run(models, seconds=[0.5], batch_sizes=[1], repeat=1, warmup=0, dtype="bf16",
                                     baseline="sew_d_tiny:bf16", log=lambda _: None)}
    assert sorted(c[0] for c in calls) == sorted(models)  # one timed forward each
    formats = {name: (autocast, linear, params) for name, autocast, _, linear, params in calls}
    bf16, fp32 = {torch.bfloat16}, {torch.float32}
    assert formats["sew_d_tiny"] == formats["sew_d_tiny:bf16"] == (False, bf16, bf16)  # --dtype bf16
    assert formats["st_sew_base@2,2,1"] == formats["w2v2_base:down2conv"] == (False, bf16, bf16)
    assert formats["sew_d_tiny:int8"] == (False, {"int8", torch.float32}, fp32)  # the front end's projection: fp32
    assert formats["sew_d_tiny:autocast-bf16"] == (True, bf16, fp32)
    assert {c[2] for c in calls if c[1]} == {torch.bfloat16}
    gmacs = {rows[name].gmacs for name in models if name.startswith("sew_d_tiny")}
    assert len(gmacs) == 1 and gmacs.pop() > 0
    assert {rows[name].dtype for name in models} == {"bf16", "int8", "autocast-bf16"}
    assert rows["sew_d_tiny:autocast-bf16"].format == "bf16"
    assert all(r.median_ms > 0 and r.gflops > 0 for r in rows.values())


def test_rows_in_a_format_they_cannot_run_in_are_refused(tiny_presets):
    from sew_plugin.inference.bench import prepare, row_format, run

    for name in ("sew_d_tiny:bf16:exit3", "sew_tiny:int8:bf16"):
        with pytest.raises(ValueError, match="one format, as its last suffix"):
            row_format(name, "fp32")

    with pytest.raises(ValueError, match="run in onnxruntime on the CPU in fp32"):
        run(["sew_d_tiny:onnx:bf16"], [0.5], [1], repeat=1, warmup=0, baseline="sew_d_tiny:onnx:bf16", log=lambda _: None)
    with pytest.raises(ValueError, match="int8 runs on the CPU"):
        prepare("sew_d_tiny:int8", "fp32", "cuda")


def test_each_row_gets_the_gemm_rate_of_its_own_format_timed_in_its_rotation(tiny_presets, monkeypatch):
    from sew_plugin.inference import bench

    product_s = {"fp32": 0.004, "bf16": 0.001, "int8": 0.002}  # a known rate per format
    slots = []
    timed = bench._timed
    monkeypatch.setattr(bench, "_timed", lambda forward, x: slots.append("row") or timed(forward, x))
    monkeypatch.setattr(bench.GemmReference, "warm_up", lambda self: None)
    monkeypatch.setattr(bench.GemmReference, "seconds", lambda self: slots.append(self.dtype) or product_s[self.dtype])
    models = ["sew_d_tiny", "sew_d_tiny:bf16", "sew_d_tiny:int8", "sew_d_tiny:autocast-bf16"]
    rows = bench.run(models, [0.2], [1, 2], repeat=3, warmup=0, baseline="sew_d_tiny", log=lambda _: None, peak=True)
    assert sorted(s for s in slots if s != "row") == sorted(["fp32", "bf16", "int8"] * 3 * 2)  # per repeat and setting
    first = slots[: 7 * 3]  # the first setting's rotation: 4 rows and 3 references, 3 times
    assert first.count("row") == 12 and first[:7].count("row") == 4  # the references among the rows, each repeat
    assert len(rows) == 8
    for row in rows:  # the autocast row's products run in bf16: bf16's rate
        assert row.gemm_gflops == pytest.approx(2 * 2048**3 / product_s[row.format] / 1e9)
        assert row.peak_share == pytest.approx(row.gflops / row.gemm_gflops)
    assert {row.format for row in rows} == {"fp32", "bf16", "int8"}


def test_sew_bench_peak_prints_the_rate_and_share_of_each_row(tiny_presets, tmp_path, capsys):
    from sew_plugin.cli import main as sew
    from sew_plugin.inference.bench import GemmReference

    reference = GemmReference("fp32", size=256, slot_s=0.01)
    reference.warm_up()
    assert reference.count > 1  # a slot of several products, not one
    assert reference.flop / reference.seconds() > 1e8  # FLOP/s of a real product, not a constant
    assert sew(["bench", "--models", "sew_d_tiny", "sew_d_tiny:bf16", "--baseline", "sew_d_tiny", "--seconds", "0.2",
                "--batch-size", "1", "--repeat", "1", "--warmup", "0", "--peak", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "GEMM rate: the median of 2048^3 products in the row's format, timed in the rows' rotation" in out
    rows = list(csv.DictReader(open(tmp_path / "bench.csv")))
    assert [row["dtype"] for row in rows] == ["fp32", "bf16"]
    for row in rows:
        gemm = float(row["gemm_gflops"])
        assert gemm > 0.1 and abs(float(row["peak_share"]) - float(row["gflops"]) / gemm) < 1e-6 * gemm
        assert f"| {gemm:.0f} ({row['dtype']}) | {100 * float(row['peak_share']):.0f}% |" in out


@pytest.mark.parametrize("argv, message", [
    (["--repeat", "0"], "argument --repeat: must be >= 1, got 0"),
    (["--batch-size", "1", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--seconds", "-1"], "argument --seconds: must be >= 0.025 and finite, got -1.0"),
    (["--seconds", "nan"], "argument --seconds: must be >= 0.025 and finite, got nan"),
    (["--warmup", "-1"], "argument --warmup: must be >= 0, got -1"),
])
def test_sew_bench_refuses_absurd_values_by_option(capsys, argv, message):
    from sew_plugin.cli import main as sew

    with pytest.raises(SystemExit) as info:
        sew(["bench", *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("device, message", [("cuda", "cuda: this torch .* sees no CUDA device"),
                                             ("gpu", "must be cpu, cuda or cuda:N, got 'gpu'")])
def test_sew_bench_on_cuda_without_a_gpu_says_so(monkeypatch, capsys, device, message):
    from sew_plugin.cli import main as sew

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        sew(["bench", "--models", "sew_tiny", "--baseline", "sew_tiny", "--device", device, "--seconds", "0.1"])
    assert stop.value.code == 2
    assert re.search(f"sew bench: error: argument --device: {message}", capsys.readouterr().err)
