"""From a folder of audio and transcripts to a WER: the real `sew` data commands, the real
`fairseq-hydra-train` for pre-training and CTC fine-tuning, and `sew infer` with both decoders."""

import csv
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import (TINY_FINETUNING, TINY_PRETRAINING, TINY_PRETRAINING_COMMON, TINY_W2V2_PRETRAINING, hydra_train,
                      log_records)
from helpers import half_precision_record, infer_result, sew_here

pytestmark = pytest.mark.slow  # every test stands on fairseq-hydra-train runs (module fixtures) and sew's commands

SEW = str(Path(sys.executable).with_name("sew"))
VOCAB = ["THE", "CAT", "SAT", "ON", "A", "MAT", "DOG", "RAN"]
N_UTTERANCES, N_VALID = 37, 13  # 13 held out, transcribed in batches of 8 (8 + 5)


def sew_cli(*args):
    """stdout of ``sew ARGS`` in this process (the script itself runs as a subprocess in the refusals)."""
    return sew_here(*args).stdout


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Audio with LibriSpeech-style transcripts, prepared with the `sew` commands."""
    root = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(1)
    lines = []
    for i in range(N_UTTERANCES):
        words = rng.choice(VOCAB, size=3)
        n = 16000 + 400 * i
        t = np.arange(n) / 16000
        x = 0.3 * np.sin(2 * np.pi * (110 + 7 * i) * t) + 0.05 * rng.standard_normal(n)
        sf.write(_mkdir(root / "audio") / f"utt{i:02d}.wav", x.astype(np.float32), 16000)
        lines.append(f"utt{i:02d} {' '.join(words)}")
    (root / "audio" / "all.trans.txt").write_text("\n".join(lines) + "\n")
    data = root / "data"
    sew_cli("manifest", root / "audio", "--dest", data, "--valid-percent", N_VALID / N_UTTERANCES)
    sew_cli("labels", data / "train.tsv", root / "audio", "--dest", data)
    sew_cli("labels", data / "valid.tsv", root / "audio", "--dest", data)
    sew_cli("lexicon", data / "train.wrd", "--dest", data / "lexicon.txt", "--dict", data / "dict.ltr.txt")
    sew_cli("lm", data / "train.wrd", "--dest", root / "lm.arpa", "--order", 2)
    return root


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


ENCODERS = {
    # pre-training config, its tiny overrides, CTC model, fine-tuning config
    "sew": ("sew_tiny", TINY_PRETRAINING, "sew_ctc", "10m"),
    "sew_d": ("sew_d_tiny", TINY_PRETRAINING, "sew_ctc", "10m"),
    # stochastic pre-training (S_f, S_k, S_q sampled from {1,2}), deterministic fine-tuning at 2,2,1
    "st_sew": (
        "st_sew_base",
        TINY_PRETRAINING_COMMON + ["model.wfe_c_channels=8", "criterion.log_keys=[prob_perplexity,squeeze_factor,kv_pool,query_pool]"],
        "sew_ctc",
        "10h_st_sew_deterministic",
    ),
    "wav2vec2": ("w2v2_base", TINY_W2V2_PRETRAINING, "wav2vec_ctc", "10m"),
}


@pytest.fixture(scope="module", params=sorted(ENCODERS))
def finetuned(request, tmp_path_factory, labelled):
    config, tiny, ctc_model, finetuning = ENCODERS[request.param]
    work = tmp_path_factory.mktemp(f"ft_{request.param}")
    pre = hydra_train(work / "pre", "pretraining", config, [f"task.data={labelled / 'data'}", *tiny, "optimization.max_update=4"])
    assert pre.returncode == 0, pre.stderr[-3000:]
    if request.param == "st_sew":  # each step's sampled configuration is in the training log
        assert '"squeeze_factor"' in pre.stdout and '"kv_pool"' in pre.stdout
    overrides = [
        f"task.data={labelled / 'data'}",
        f"model.w2v_path={work / 'pre' / 'ckpt' / 'checkpoint_last.pt'}",
        *TINY_FINETUNING,
    ]
    if ctc_model != "sew_ctc":
        overrides.append(f"model._name={ctc_model}")
    ft = hydra_train(work / "ft", "finetuning", finetuning, overrides)
    assert ft.returncode == 0, ft.stderr[-3000:]
    assert "valid_wer" in ft.stdout + ft.stderr  # fairseq's ctc criterion scored the valid split
    return request.param, work / "ft" / "ckpt" / "checkpoint_last.pt"


def test_infer_transcribes_every_utterance_with_both_decoders(finetuned, labelled, tmp_path):
    name, ckpt = finetuned
    data = labelled / "data"
    lexicon_words = {line.split()[0] for line in (data / "lexicon.txt").read_text().splitlines()}

    point = ["--operating-point", "2,2,1"] if name == "st_sew" else []
    bad = subprocess.run([SEW, "infer", str(ckpt), str(data / "valid.tsv"), "--operating-point", "3,1,1"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--operating-point 3,1,1" in bad.stderr and "Traceback" not in bad.stderr
    out = sew_cli("infer", ckpt, data / "valid.tsv", "--batch-size", 8, "--results-dir", tmp_path / "greedy", *point)
    assert f"transcribed {N_VALID} of {N_VALID} utterances" in out
    assert "WER" in out and "ms per second of audio" in out
    summary = json.loads(infer_result(tmp_path / "greedy").read_text())
    assert summary["utterances_transcribed"] == N_VALID and summary["words"] == 3 * N_VALID
    assert summary["forward_seconds"] > 0 and 0 <= summary["wer"] and summary["decoder"] == {"decoder": "viterbi"}
    rows = infer_result(tmp_path / "greedy", "hypotheses").read_text().splitlines()[1:]
    assert len(rows) == N_VALID

    out = sew_cli(
        "infer", ckpt, data / "valid.tsv", "--batch-size", 8, "--decoder", "kenlm",
        "--lm", labelled / "lm.arpa", "--lexicon", data / "lexicon.txt", "--beam", 20, "--results-dir", tmp_path / "lm",
    )
    assert f"transcribed {N_VALID} of {N_VALID} utterances" in out
    hyps = [row.split("\t")[1].split() for row in infer_result(tmp_path / "lm", "hypotheses").read_text().splitlines()[1:]]
    assert len(hyps) == N_VALID
    assert all(set(h) <= lexicon_words for h in hyps)  # the lexicon decoder only says lexicon words
    settings = json.loads(infer_result(tmp_path / "lm").read_text())["decoder"]  # what the results were decoded with
    assert settings == {"decoder": "kenlm", "lm": str(labelled / "lm.arpa"), "lexicon": str(data / "lexicon.txt"), "beam": 20,
                        "beam_size_token": 0, "beam_threshold": 25.0, "lm_weight": 2.0, "word_score": -1.0, "sil_score": 0.0}


def test_fine_tuned_checkpoint_loads_only_through_the_allow_list(finetuned, labelled, tmp_path):
    name, ckpt = finetuned
    load = [sys.executable, "-c", f"import torch; torch.load({str(ckpt)!r}, map_location='cpu')"]
    bare = subprocess.run(load, capture_output=True, text=True)
    assert bare.returncode != 0 and "fairseq.data.dictionary.Dictionary" in bare.stderr  # torch's safe default
    with_plugin = subprocess.run([load[0], "-c", "import sew_plugin.models; " + load[2]], capture_output=True, text=True)
    assert with_plugin.returncode == 0, with_plugin.stderr[-2000:]

    # fairseq's own load in fairseq-hydra-train resumes the fine-tuning run (weights-only, allow-listed)
    config, _, ctc_model, finetuning = ENCODERS[name]
    work = ckpt.parents[2]
    overrides = [f"task.data={labelled / 'data'}", f"model.w2v_path={work / 'pre' / 'ckpt' / 'checkpoint_last.pt'}",
                 *TINY_FINETUNING, "optimization.max_update=7"]
    if ctc_model != "sew_ctc":
        overrides.append(f"model._name={ctc_model}")
    shutil.copytree(ckpt.parent, tmp_path / "ckpt")  # resume a copy: other tests read this checkpoint
    resumed = hydra_train(tmp_path, "finetuning", finetuning, overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "@ 6 updates" in resumed.stdout and '"num_updates": "7"' in resumed.stdout

    from sew_plugin.checkpoint import load_checkpoint

    model, cfg, task = load_checkpoint(ckpt)
    assert len(task.target_dictionary) > 4
    encoder = model.w2v_encoder.w2v_model
    assert type(encoder).__name__ == {"sew": "SEWModel", "sew_d": "SEWDModel", "st_sew": "StSEWModel",
                                  "wav2vec2": "SeededWav2Vec2Model"}[name]  # fairseq's, its masks seeded
    if name == "st_sew":  # deterministic fine-tuning stored its operating point with the model
        assert encoder.encoder.fixed == (2, [2, 2], [1, 1])
    # the fine-tuning overrides were applied to the rebuilt pre-training model
    assert {m.layerdrop for m in encoder.modules() if hasattr(m, "layerdrop")} == {0.05}
    assert encoder.mask_channel_prob == 0.1 and encoder.mask_length == 2
    assert encoder.feature_grad_mult == 0.0
    assert encoder.quantizer is None and encoder.final_proj is None


def test_sweep_measures_every_operating_point_as_infer_does(finetuned, labelled, tmp_path):
    name, ckpt = finetuned
    data = labelled / "data"
    if name != "st_sew":
        bad = subprocess.run([SEW, "sweep", str(ckpt), str(data / "valid.tsv"), "--points", "2,1,1"],
                             capture_output=True, text=True)
        assert bad.returncode != 0 and "applies to St-SEW encoders" in bad.stderr and "Traceback" not in bad.stderr
        return
    sew_cli("sweep", ckpt, data / "valid.tsv", "--points", "1,1,1", "2,1,1", "2,2,2", "--out", tmp_path / "sweep")
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["point"] for r in rows] == ["1,1,1", "2,1,1", "2,2,2"]
    macs = [float(r["gmacs_per_10s"]) for r in rows]
    assert macs[0] > macs[1] > macs[2] > 0  # squeezing and pooling remove compute
    assert any(r["pareto"] == "True" for r in rows)
    # each point's WER is what sew infer reports at that point
    sew_cli("infer", ckpt, data / "valid.tsv", "--operating-point", "2,1,1", "--results-dir", tmp_path / "infer")
    assert json.loads(infer_result(tmp_path / "infer").read_text())["wer"] == float(rows[1]["wer"])
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 2,2,2 |" in (tmp_path / "sweep" / "sweep.md").read_text()


# ---- early exit: joint and two-step fine-tuning with fairseq-hydra-train, then exit policies ----

EXITS = ["criterion._name=ctc_exits", "+model.exit_layers='1,3'"]
EXIT_LOSSES = ("exit1_loss", "exit3_loss", "final_loss")
# The exit runs validate every 2 updates (not only at the end of the epoch, update 6): the held-out
# losses, deterministic in eval mode, are logged three times on the same data, so their fall measures
# training (the training batches differ in their utterances' lengths from update to update, and
# their losses with them).
VALIDATE_EVERY_2 = ["dataset.validate_interval_updates=2"]


@pytest.fixture(scope="module")
def exit_models(tmp_path_factory, labelled):
    """A 4-layer SEW fine-tuned with exits after layers 1 and 3: jointly, and in two steps."""
    work = tmp_path_factory.mktemp("exits")
    tiny = [o for o in TINY_PRETRAINING if not o.startswith("model.encoder_layers=")]
    pre = hydra_train(work / "pre", "pretraining", "sew_tiny",
                      [f"task.data={labelled / 'data'}", *tiny, "model.encoder_layers=4", "optimization.max_update=2"])
    assert pre.returncode == 0, pre.stderr[-3000:]
    base = [f"task.data={labelled / 'data'}", f"model.w2v_path={work / 'pre' / 'ckpt' / 'checkpoint_last.pt'}", *TINY_FINETUNING]
    joint = hydra_train(work / "joint", "finetuning", "10h", base + EXITS + VALIDATE_EVERY_2)
    assert joint.returncode == 0, joint.stderr[-3000:]
    step1 = hydra_train(work / "step1", "finetuning", "10h", base)  # the backbone alone
    assert step1.returncode == 0, step1.stderr[-3000:]
    step1_ckpt = work / "step1" / "ckpt" / "checkpoint_last.pt"
    step2 = hydra_train(work / "step2", "finetuning", "10h",
                        base + EXITS + VALIDATE_EVERY_2 + ["+model.exit_training=exits_only", f"+model.exit_init={step1_ckpt}"])
    assert step2.returncode == 0, step2.stderr[-3000:]
    return {"joint": (work / "joint" / "ckpt" / "checkpoint_last.pt", joint),
            "step1": (step1_ckpt, step1), "step2": (work / "step2" / "ckpt" / "checkpoint_last.pt", step2)}


def test_fine_tuning_with_exits_logs_every_exit(exit_models):
    for mode in ("joint", "step2"):
        log = exit_models[mode][1].stdout + exit_models[mode][1].stderr
        for key in ("exit1_loss", "exit3_loss", "final_loss", "exit1_wer", "exit3_wer"):
            assert key in log, (mode, key)


def test_every_exit_loss_is_finite_and_falls_with_training(exit_models):
    """Each exit's CTC loss, and the final head's, is a finite number at every update and every
    validation; on the held-out data each exit's loss falls from the first validation (after update
    2) to the last (update 6), jointly trained or alone. Exits-only training (step 2) leaves the final
    head's held-out loss exactly where it was."""
    valid = {}
    for mode in ("joint", "step2"):
        log = exit_models[mode][1].stdout + exit_models[mode][1].stderr
        train = log_records(log, "train_inner")
        assert [r["num_updates"] for r in train] == [str(n) for n in range(1, 7)], mode
        valid[mode] = log_records(log, "valid")
        assert [r["valid_num_updates"] for r in valid[mode]] == ["2", "4", "6"], mode
        for key in EXIT_LOSSES:
            assert all(math.isfinite(float(r[key])) for r in train), (mode, key, [r[key] for r in train])
            assert all(math.isfinite(float(r[f"valid_{key}"])) for r in valid[mode]), (mode, key)
        first, last = valid[mode][0], valid[mode][-1]
        for key in ("exit1_loss", "exit3_loss"):
            assert float(last[f"valid_{key}"]) < float(first[f"valid_{key}"]), (mode, key, first, last)
    assert len({r["valid_final_loss"] for r in valid["step2"]}) == 1, valid["step2"]  # backbone, final head frozen


def test_ctc_fine_tuning_with_exits_in_half_precision(exit_models, labelled, tmp_path):
    """The recipes fine-tune with ``common.fp16`` on GPUs; ``common.bf16`` takes fairseq's same
    half-precision path on the CPU (model and criterion halved, fp32 master weights): the checkpoint
    names fairseq's FP16Optimizer and holds bf16 values only, and every exit's loss is finite."""
    pre = exit_models["step1"][0].parents[2] / "pre" / "ckpt" / "checkpoint_last.pt"
    run = hydra_train(tmp_path, "finetuning", "10h", [f"task.data={labelled / 'data'}", f"model.w2v_path={pre}",
                                                      *TINY_FINETUNING, *EXITS, "common.bf16=true",
                                                      "optimization.max_update=3"], threads=1)
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "'bf16': True" in log
    losses = [float(v) for v in re.findall(r'"loss": "([^"]+)"', log)]
    assert losses and all(math.isfinite(v) for v in losses) and "exit1_loss" in log
    train = log_records(log, "train_inner")
    assert [r["num_updates"] for r in train] == ["1", "2", "3"]
    for key in EXIT_LOSSES:
        assert all(math.isfinite(float(r[key])) for r in train), (key, [r[key] for r in train])
    optimizer, tensors, not_bf16 = half_precision_record(tmp_path / "ckpt" / "checkpoint_last.pt")
    assert optimizer == "FP16Optimizer" and tensors > 0 and not_bf16 == [], (optimizer, not_bf16[:5])


def test_two_step_training_changes_only_the_exit_heads(exit_models):
    from sew_plugin.data.checkpoints import read_weights

    step1, step2 = read_weights(exit_models["step1"][0]), read_weights(exit_models["step2"][0])
    assert {k.split(".")[1] for k in step2 if k.startswith("exit_heads.")} == {"1", "3"}
    assert set(step2) - set(step1) == {k for k in step2 if k.startswith("exit_heads.")}
    assert all(torch.equal(step1[k], step2[k]) for k in step1)  # backbone and final head frozen
    log = exit_models["step2"][1].stdout + exit_models["step2"][1].stderr
    losses = [float(v) for v in re.findall(r'"exit1_loss": "([0-9.]+)"', log)]
    assert len(losses) >= 2 and losses[-1] != losses[0]  # while the exits trained


def test_infer_with_exit_policies(exit_models, labelled, tmp_path):
    ckpt = exit_models["joint"][0]
    data = labelled / "data"

    def summary(name, *policy):
        sew_cli("infer", ckpt, data / "valid.tsv", "--results-dir", tmp_path / name, *policy)
        return json.loads(infer_result(tmp_path / name).read_text())

    first = summary("layer1", "--exit-policy", "layer", "--exit-layer", 1)
    assert first["exit_histogram"] == {"1": N_VALID} and first["mean_exit_layer"] == 1
    never = summary("never", "--exit-policy", "entropy", "--threshold=-inf")
    full = summary("full")
    assert never["exit_histogram"] == {"4": N_VALID} and never["wer"] == full["wer"]
    always = summary("always", "--exit-policy", "entropy", "--threshold", "inf")
    assert always["exit_histogram"] == {"1": N_VALID} and always["wer"] == first["wer"]
    rows = infer_result(tmp_path / "always", "hypotheses").read_text().splitlines()
    assert rows[0].endswith("\texit_layer") and all(r.endswith("\t1") for r in rows[1:])
    bad = subprocess.run([SEW, "infer", str(ckpt), str(data / "valid.tsv"), "--exit-policy", "entropy"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "needs --threshold" in bad.stderr and "Traceback" not in bad.stderr

    # N-best confidence from the beam decoder: the best hypothesis always holds >= 0 of the mass,
    # and never more than all of it
    lm = ["--decoder", "kenlm", "--lm", labelled / "lm.arpa", "--lexicon", data / "lexicon.txt", "--beam", 20]
    sure = summary("nbest0", "--exit-policy", "nbest", "--threshold", 0, "--nbest", 10, *lm)
    unsure = summary("nbest2", "--exit-policy", "nbest", "--threshold", 2, "--nbest", 10, *lm)
    assert sure["exit_histogram"] == {"1": N_VALID} and unsure["exit_histogram"] == {"4": N_VALID}
    assert unsure["exit_policy"] == "nbest threshold 2, N-best 10"


def test_sweep_of_exit_thresholds(exit_models, labelled, tmp_path):
    ckpt, data = exit_models["joint"][0], labelled / "data"
    sew_cli("sweep", ckpt, data / "valid.tsv", "--exit-policy", "entropy", "--thresholds", 0, 100,
            "--out", tmp_path / "sweep")
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    # entropy is never below 0 (no one leaves early) and always below 100 (everyone leaves at layer 1)
    assert [(r["point"], float(r["mean_exit_layer"])) for r in rows] == [("0", 4.0), ("100", 1.0)]
    assert "| entropy threshold | mean exit layer |" in (tmp_path / "sweep" / "sweep.md").read_text()


@pytest.fixture(scope="module")
def compressed_models(tmp_path_factory, labelled):
    """wav2vec 2.0 with CIF pre-trained (lambda sampled) and CTC fine-tuned at lambda 1; a SEW fine-tuned
    on 4x downsampled input (learned conv) with 2 CTC frames per encoder frame."""
    work = tmp_path_factory.mktemp("compressed")
    data = labelled / "data"
    pre = hydra_train(work / "cif_pre", "pretraining", "w2v2_base_cif",
                      [f"task.data={data}", *TINY_W2V2_PRETRAINING, "optimization.max_update=4"])
    assert pre.returncode == 0, pre.stderr[-3000:]
    cif = hydra_train(work / "cif_ft", "finetuning", "10h",
                      [f"task.data={data}", f"model.w2v_path={work / 'cif_pre' / 'ckpt' / 'checkpoint_last.pt'}",
                       *TINY_FINETUNING, "+model.cif_lambda=1.0"])
    assert cif.returncode == 0, cif.stderr[-3000:]
    pre_sew = hydra_train(work / "sew_pre", "pretraining", "sew_tiny",
                          [f"task.data={data}", *TINY_PRETRAINING, "optimization.max_update=2"])
    assert pre_sew.returncode == 0, pre_sew.stderr[-3000:]
    down = hydra_train(work / "down_ft", "finetuning", "10h",
                       [f"task.data={data}", f"model.w2v_path={work / 'sew_pre' / 'ckpt' / 'checkpoint_last.pt'}",
                        *TINY_FINETUNING, "+model.input_downsample=conv", "+model.input_downsample_factor=4",
                        "+model.ctc_frames_per_step=2"])
    assert down.returncode == 0, down.stderr[-3000:]
    return {"cif_pre": pre, "cif": (work / "cif_ft" / "ckpt" / "checkpoint_last.pt", cif),
            "down": (work / "down_ft" / "ckpt" / "checkpoint_last.pt", down)}


def test_cif_pretraining_logs_lambda_frame_period_and_rate_loss(compressed_models):
    log = compressed_models["cif_pre"].stdout + compressed_models["cif_pre"].stderr
    lambdas = [float(v) for v in re.findall(r'"cif_lambda": "([0-9.]+)"', log)]
    periods = [float(v) for v in re.findall(r'"frame_period": "([0-9.]+)"', log)]
    assert len(lambdas) >= 4 and len(set(lambdas)) > 1 and all(0 <= v < 1 for v in lambdas)
    assert all(20 <= p <= 20 / 0.05 for p in periods) and max(periods) > 25  # compressed, not 20 ms
    # fairseq logs the contrastive loss as loss_0 and the extra losses after it: loss_3 is CIF's rate loss
    assert '"loss_3"' in log


def test_cif_fine_tuned_model_runs_at_any_lambda(compressed_models, labelled, tmp_path):
    from sew_plugin.data.checkpoints import read_weights

    ckpt, run = compressed_models["cif"]
    assert "valid_wer" in run.stdout + run.stderr
    assert any(k.startswith("w2v_encoder.w2v_model.cif.alpha.") for k in read_weights(ckpt))
    data = labelled / "data"
    summaries = {}
    for lam in ("0", "1.0", "1.5"):
        sew_cli("infer", ckpt, data / "valid.tsv", "--cif-lambda", lam, "--results-dir", tmp_path / lam)
        summaries[lam] = json.loads(infer_result(tmp_path / lam).read_text())
        assert summaries[lam]["utterances_transcribed"] == N_VALID
    assert summaries["0"]["frame_period_ms"] == pytest.approx(20.0)  # lambda 0: every frame fires
    assert 20.0 < summaries["1.0"]["frame_period_ms"] < summaries["1.5"]["frame_period_ms"]
    bad = subprocess.run([SEW, "infer", str(ckpt), str(data / "valid.tsv"), "--cif-lambda", "2"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--cif-lambda 2" in bad.stderr and "Traceback" not in bad.stderr

    # CTC sees the compressed frames repeated by their durations (cif_upsample, on by default)
    from sew_plugin.checkpoint import load_checkpoint
    from sew_plugin.models.sew_ctc import set_cif_lambda

    model, _, _ = load_checkpoint(ckpt, {"data": str(data)})
    model.eval()
    set_cif_lambda(model, 1.5)
    source = torch.randn(2, 32000)
    padding = torch.zeros(2, 32000, dtype=torch.bool)
    padding[1, 20000:] = True
    with torch.no_grad():
        out = model(source=source, padding_mask=padding)
        upsampled, compressed = (~out["padding_mask"]).sum(-1), out["cif"]
        assert torch.equal(upsampled, compressed.durations.sum(1)) and (upsampled > 2 * compressed.lengths).all()
        model.cfg.cif_upsample = False
        assert torch.equal((~model(source=source, padding_mask=padding)["padding_mask"]).sum(-1), compressed.lengths)

    sew_cli("sweep", ckpt, data / "valid.tsv", "--cif-lambdas", 0, 1.5, "--out", tmp_path / "sweep")
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["point"] for r in rows] == ["0", "1.5"]
    assert float(rows[1]["frame_period_ms"]) == pytest.approx(summaries["1.5"]["frame_period_ms"])
    assert float(rows[0]["wer"]) == pytest.approx(summaries["0"]["wer"])


def test_downsampled_model_emits_two_ctc_frames_per_encoder_frame(compressed_models, labelled, tmp_path):
    from sew_plugin.checkpoint import load_checkpoint

    ckpt, run = compressed_models["down"]
    assert "valid_wer" in run.stdout + run.stderr
    model, _, _ = load_checkpoint(ckpt, {"data": str(labelled / "data")})
    model.eval()
    assert model.input_downsampler.conv.weight.shape == (1, 1, 161)
    source = torch.randn(2, 32000)
    padding = torch.zeros(2, 32000, dtype=torch.bool)
    padding[1, 20000:] = True
    with torch.no_grad():
        out = model(source=source, padding_mask=padding)
        encoder_frames = model.w2v_encoder.w2v_model._get_feat_extract_output_lengths(torch.tensor([8000, 5000]))
    assert ((~out["padding_mask"]).sum(-1) == 2 * encoder_frames).all()
    sew_cli("infer", ckpt, labelled / "data" / "valid.tsv", "--results-dir", tmp_path / "infer")
    assert json.loads(infer_result(tmp_path / "infer").read_text())["utterances_transcribed"] == N_VALID
    bad = subprocess.run([SEW, "infer", str(ckpt), str(labelled / "data" / "valid.tsv"), "--cif-lambda", "1"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "--cif-lambda 1.0: model.cif_lambda applies to encoders pre-trained with model.compressor=cif" in bad.stderr
