"""``sew export-onnx``: the ONNX graph of a CTC model, run by onnxruntime, against PyTorch, on
lengths and batch sizes the trace never saw; refusals; the ``NAME:onnx`` row of ``sew bench``."""

import argparse
import math

import pytest
import torch
from fairseq.models.wav2vec.wav2vec2_asr import Wav2VecCtc

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import sew_plugin.models  # noqa: E402,F401
from sew_plugin.cli import main  # noqa: E402
from sew_plugin.data.errors import DataError  # noqa: E402
from sew_plugin.interop import onnx as export
from sew_plugin.modules.masked_group_norm import mask_feature_norm  # noqa: E402

from helpers import LETTERS, ctc_model, letters, write_checkpoint  # noqa: E402

TOLERANCE = 1e-4
# batches the graph was not traced on (it is traced on 2 rows of 1.3 and 1.1 s): one row; three
# padded rows; a row of 30 ms (one 20 ms frame, no squeezed frame) beside a longer one; no padding
UNSEEN = [(0.9,), (0.7, 1.9, 2.6), (0.03, 0.5), (1.6, 1.6)]
# single rows of 20 ... 27 frames: every remainder of the length modulo the squeeze and pooling factors
EVERY_REMAINDER = [((400 + 320 * frames) / 16000,) for frames in range(19, 27)]


def write_dictionary(folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dict.ltr.txt").write_text("".join(f"{c} 1\n" for c in LETTERS))


def check_against_pytorch(model, path, batches=UNSEEN) -> float:
    session = export.session(path, threads=1)
    return max(export.max_abs_diff(model, session, seconds) for seconds in batches)


def test_graph_has_dynamic_batch_and_length_axes(tmp_path):
    path = export.export(ctc_model("sew"), tmp_path / "sew.onnx")
    graph = onnx.load(str(path)).graph
    onnx.checker.check_model(onnx.load(str(path)))

    def dims(values):
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    assert dims(graph.input) == {"source": ["batch", "samples"], "padding_mask": ["batch", "samples"]}
    assert dims(graph.output) == {"logits": ["batch", "frames", len(letters())], "lengths": ["batch"]}
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.output)}
    assert types == {"source": onnx.TensorProto.FLOAT, "padding_mask": onnx.TensorProto.BOOL,
                     "logits": onnx.TensorProto.FLOAT, "lengths": onnx.TensorProto.INT64}


@pytest.mark.parametrize("kind, ctc", [
    ("sew", {}),
    ("sew_d", {}),
    ("st_sew", {"operating_point": "2,2,1"}),
    ("st_sew", {"operating_point": "1,2,2"}),
    ("st_sew", {"operating_point": "2,[1,2],[2,1]"}),
    ("wav2vec2", {}),
])
def test_onnxruntime_matches_pytorch_on_lengths_and_batches_not_traced(tmp_path, kind, ctc):
    model = ctc_model(kind, **ctc)
    path = export.export(model, tmp_path / f"{kind}.onnx")
    assert check_against_pytorch(model, path, UNSEEN + EVERY_REMAINDER) < TOLERANCE  # and equal frame counts


def test_input_downsampling_frames_per_step_and_blank_weight_are_exported(tmp_path):
    model = ctc_model("sew", input_downsample="avgpool", input_downsample_factor=4, ctc_frames_per_step=2,
                      blank_weight=1.5)
    path = export.export(model, tmp_path / "down.onnx")
    assert check_against_pytorch(model, path, UNSEEN[:2]) < TOLERANCE


@pytest.mark.parametrize("mode", ["add", "set"])
def test_blank_weight_is_fairseqs_get_logits_without_its_padding_mask(mode):
    from types import SimpleNamespace

    from sew_plugin.interop import with_blank_weight

    logits = torch.randn(7, 2, 5)  # (T, B, V), nothing padded
    expected = Wav2VecCtc.get_logits(SimpleNamespace(blank_weight=1.5, blank_mode=mode),
                                     {"encoder_out": logits.clone(), "padding_mask": None})
    assert torch.equal(with_blank_weight(logits, 1.5, mode), expected)
    assert with_blank_weight(logits, 0.0, mode) is logits
    with pytest.raises(ValueError, match="model.blank_mode='max'"):
        with_blank_weight(logits, 1.5, "max")


def test_sew_with_the_original_group_norm_front_end(tmp_path):
    # GroupNorm over a padded row's whole length (the released models' front end) is less well
    # conditioned on short rows in long batches: still within the tolerance
    model = ctc_model("sew", extractor_mode="default")
    assert check_against_pytorch(model, export.export(model, tmp_path / "gn.onnx"), UNSEEN[:2]) < TOLERANCE


@pytest.mark.parametrize("kind", ["sew", "sew_d", "st_sew", "wav2vec2"])
def test_the_graph_of_a_masked_group_norm_model_is_batch_invariant_at_every_length(tmp_path, kind):
    """The graph computes the masked statistics: each row of a padded batch gets its own logits
    alone, also for a batch whose longest row has a single 20 ms frame (an onnxruntime Reshape
    failed there on the 0-length squeezed sequence)."""
    model = ctc_model(kind, extractor_mode="default", **({"operating_point": "2,2,1"} if kind == "st_sew" else {}))
    assert mask_feature_norm(model) == 1
    session = export.session(export.export(model, tmp_path / "gn.onnx"), threads=1)
    for seconds in [(0.03,), (0.03, 0.026), (0.04, 2.5, 0.3), (1.3, 1.1)]:
        source, padding = export.waveform_batch(seconds, seed=7)
        logits, lengths = export.run_session(session, source, padding)
        for row, n in enumerate(int(s * 16000) for s in seconds):
            alone, alone_lengths = export.run_session(session, source[row : row + 1, :n], padding[row : row + 1, :n])
            assert lengths[row] == alone_lengths[0] >= 1
            frames = int(lengths[row])
            assert (logits[row, :frames] - alone[0, :frames]).abs().max() < 1e-4, (kind, seconds, row)
        assert export.max_abs_diff(model, session, seconds) < TOLERANCE


def test_models_that_decide_at_run_time_are_refused_with_the_reason(tmp_path):
    with pytest.raises(export.ExportError, match="early-exit models cannot be exported: which layers run"):
        export.export(ctc_model("sew", exit_layers="1"), tmp_path / "exit.onnx")
    with pytest.raises(export.ExportError, match="CIF models cannot be exported: .*integrate-and-fire"):
        export.export(ctc_model("sew_cif", cif_lambda=1.0), tmp_path / "cif.onnx")
    with pytest.raises(export.ExportError, match="samples its operating point .* --operating-point"):
        export.export(ctc_model("st_sew"), tmp_path / "st.onnx")
    assert not list(tmp_path.iterdir())


def parse(argv):
    from sew_plugin.cli.export import add_onnx_arguments

    parser = argparse.ArgumentParser()
    add_onnx_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


@pytest.mark.parametrize("kind", ["st_sew", "wav2vec2"])
def test_export_onnx_command_on_a_fine_tuned_checkpoint(tmp_path, capsys, kind):
    from sew_plugin.cli.export import export_onnx

    model = ctc_model(kind)
    if kind == "st_sew":
        model.w2v_encoder.w2v_model.encoder.set_operating_point(None)  # fine-tuned stochastically
    write_dictionary(tmp_path / "data")
    ckpt = tmp_path / "checkpoint_best.pt"
    write_checkpoint(model, ckpt, tmp_path / "gone")  # trained where the dictionary no longer is
    out = tmp_path / "out" / "model.onnx"
    point = ["--operating-point", "2,2,1"] if kind == "st_sew" else []

    with pytest.raises(DataError, match="dict.ltr.txt: dictionary not found; pass --data"):
        export_onnx(parse([ckpt, out, *point]))
    if kind == "st_sew":
        with pytest.raises(SystemExit, match="samples its operating point"):
            export_onnx(parse([ckpt, out, "--data", tmp_path / "data"]))
        with pytest.raises(SystemExit, match="--operating-point 3,1,1: .*S_f=3"):
            export_onnx(parse([ckpt, out, "--data", tmp_path / "data", "--operating-point", "3,1,1"]))
    capsys.readouterr()
    assert export_onnx(parse([ckpt, out, "--data", tmp_path / "data", *point])) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "max abs logit difference" in printed

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["vocabulary"].split() == letters().symbols and meta["blank_index"] == "0"
    assert meta["normalize"] == "false" and meta["frame_ms"] == "20"
    assert meta["operating_point"] == ("2,2,1" if kind == "st_sew" else "")
    if kind == "st_sew":
        model.w2v_encoder.w2v_model.encoder.set_operating_point("2,2,1")
    # the graph is the checkpoint's model as loaded for inference (a GroupNorm front end normalising
    # each row over its own frames): compare with the model the test built, set the same way
    mask_feature_norm(model)
    session = export.session(out, threads=1)
    assert export.max_abs_diff(model, session, (1.7, 0.45)) < TOLERANCE


@pytest.mark.parametrize("task_name", ["audio_finetuning", "sew_audio_finetuning"])
def test_a_missing_dictionary_is_refused_with_the_hint_to_pass_data(tmp_path, capsys, task_name):
    """fairseq's fine-tuning task raises ``FileNotFoundError`` for a missing dictionary, this plugin's
    a ``DataError``: both are refused by name with the hint, and ``--data`` supplies the folder."""
    gone = tmp_path / "training_machine" / "data"
    ckpt, out = tmp_path / "checkpoint_best.pt", tmp_path / "model.onnx"
    write_checkpoint(ctc_model("sew"), ckpt, gone, task_name)
    assert main(["export-onnx", str(ckpt), str(out), "--no-check"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (f"sew export-onnx: error: {gone}/dict.ltr.txt: dictionary not found; "
                     "pass --data FOLDER with its dict.ltr.txt")
    assert not out.exists()

    write_dictionary(tmp_path / "data")
    assert main(["export-onnx", str(ckpt), str(out), "--no-check", "--data", str(tmp_path / "data")]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["vocabulary"].split() == letters().symbols


def test_bench_onnx_row_is_timed_beside_its_pytorch_row(tiny_presets):
    from sew_plugin.inference.bench import build, run

    rows = {r.model: r for r in run(["sew_d_tiny:onnx", "st_sew_base@2,2,1:onnx", "sew_d_tiny"], [0.5], [2],
                                     repeat=2, warmup=1, baseline="sew_d_tiny", log=lambda _: None)}
    onnx_row, torch_row = rows["sew_d_tiny:onnx"], rows["sew_d_tiny"]
    assert onnx_row.median_ms > 0 and math.isnan(onnx_row.peak_mb)
    assert onnx_row.gmacs == torch_row.gmacs > 0 and onnx_row.params_m == torch_row.params_m
    # the speed-up over the PyTorch row, rotation by rotation: within what their times allow
    assert torch_row.min_ms / onnx_row.max_ms <= onnx_row.speedup <= torch_row.max_ms / onnx_row.min_ms
    assert rows["st_sew_base@2,2,1:onnx"].frame_ms == 40

    # the onnxruntime forward gives the PyTorch row's features
    model, forward = build("sew_d_tiny:onnx")
    x = torch.randn(2, 11000)
    with torch.no_grad():
        expected = forward.torch_forward(x)
    assert (torch.from_numpy(forward(x)) - expected).abs().max() < TOLERANCE

    with pytest.raises(ValueError, match="samples its operating point"):
        build("st_sew_base:onnx")
    with pytest.raises(ValueError, match="':onnx' takes a model name"):
        build("sew_d_tiny:exit1:onnx")
    with pytest.raises(ValueError, match="onnxruntime on the CPU in fp32"):
        run(["sew_d_tiny:onnx"], [0.5], [1], dtype="bf16", baseline="sew_d_tiny")


def test_a_graph_that_fails_the_check_is_refused_and_not_left_behind(tmp_path, capsys):
    """``--tolerance 0``: the check after export fails; the command says so (exit 2, one error line)
    and OUT is not written, nor its staging file left beside it."""
    write_dictionary(tmp_path / "data")
    ckpt = tmp_path / "checkpoint.pt"
    write_checkpoint(ctc_model("sew", extractor_mode="default"), ckpt, tmp_path / "data")
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(SystemExit) as stopped:
        main(["export-onnx", str(ckpt), str(out), "--tolerance", "0"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"exceeds --tolerance 0; {out} was not written")
    assert not out.exists() and list(out.parent.iterdir()) == []
    assert main(["export-onnx", str(ckpt), str(out)]) == 0 and out.is_file()
    assert list(out.parent.iterdir()) == [out]
