"""Labels against the frames the CTC head really emits: ``SEWCtc.ctc_frames`` equals what forward
gives, and the fine-tuning task counts the utterances CTC cannot align at the built model's rate
(input downsampling x4 gives 80 ms frames, too few for letters), not at 20 ms."""

import logging

import pytest
import torch

from conftest import (TINY_FINETUNING, TINY_PRETRAINING, TINY_SEW, hydra_train, waveform_batch, write_manifest,
                      write_wav_corpus)
from helpers import finetuning_task, tiny_ctc
from sew_plugin.models.sew import SEWConfig
from sew_plugin.models.st_sew import StSEWConfig

DOWN4 = dict(input_downsample="avgpool", input_downsample_factor=4)
CTC_MODELS = {
    "sew_s2": lambda: tiny_ctc(SEWConfig(**TINY_SEW, squeeze_factor=2), "sew"),
    "avgpool4": lambda: tiny_ctc(SEWConfig(**TINY_SEW), "sew", **DOWN4),
    "avgpool4_2_per_step": lambda: tiny_ctc(SEWConfig(**TINY_SEW), "sew", **DOWN4, ctc_frames_per_step=2),
    "st_sew_222_resample2": lambda: tiny_ctc(StSEWConfig(**TINY_SEW), "st_sew", operating_point="2,2,2",
                                             input_downsample="resample", input_downsample_factor=2),
}
CIF = SEWConfig(**TINY_SEW, squeeze_factor=1, compressor="cif")


@pytest.mark.parametrize("name", sorted(CTC_MODELS))
def test_ctc_frames_are_the_frames_forward_emits(name):
    model = CTC_MODELS[name]().eval()
    lengths = [24000, 16000, 9001, 2000]
    source, padding = waveform_batch(lengths)
    with torch.no_grad():
        emitted = (~model(source=source, padding_mask=padding)["padding_mask"]).sum(-1)
    assert model.ctc_frames(torch.tensor(lengths)).tolist() == emitted.tolist()


@pytest.mark.parametrize("upsample", [True, False])
def test_ctc_frames_of_cif_vary_with_the_audio(upsample):
    model = tiny_ctc(CIF, "sew", cif_lambda=1.0, cif_upsample=upsample).eval()
    assert model.ctc_frames(torch.tensor([16000])) is None
    source, padding = waveform_batch([9001])
    with torch.no_grad():  # at most the 27 frames of 20 ms, which the task counts as the upper bound
        assert (~model(source=source, padding_mask=padding)["padding_mask"]).sum() <= 27


# 1 s utterances: 49 frames at 20 ms, 12 at 80 ms (avgpool x4), 24 with 2 CTC frames per encoder frame
DENSE, SPARSE = "A B C D | E F G H | I J K L | M N O", "A B |"  # 18 and 3 CTC frames needed
LETTERS = "ABCDEFGHIJKLMNO|"


def labelled_split(folder, labels):
    rows = write_wav_corpus(folder / "audio", [16000] * len(labels))
    write_manifest(folder / "valid.tsv", folder / "audio", rows)
    (folder / "valid.ltr").write_text("".join(f"{line}\n" for line in labels))
    (folder / "dict.ltr.txt").write_text("".join(f"{c} 1\n" for c in LETTERS))
    return folder


def task_with_model(folder, **ctc):
    """The fine-tuning task of ``folder`` after building a tiny ``sew_ctc`` through it, as fairseq does."""
    task = finetuning_task(folder)
    task.build_model(tiny_ctc(SEWConfig(**TINY_SEW), "sew", _name="sew_ctc", **ctc).cfg)
    return task


@pytest.mark.parametrize("dense, loud", [(1, False), (2, True)])
def test_unalignable_utterances_are_counted_at_the_models_ctc_rate(tmp_path, caplog, dense, loud):
    folder = labelled_split(tmp_path, [DENSE] * dense + [SPARSE] * (3 - dense))
    with caplog.at_level(logging.WARNING, logger="sew_plugin.tasks.audio"):
        finetuning_task(folder).load_dataset("valid")  # no model yet: 20 ms frames hold the letters
        assert "label symbols" not in caplog.text
        task_with_model(folder, **DOWN4, ctc_frames_per_step=2).load_dataset("valid")
        assert "label symbols" not in caplog.text
        task_with_model(folder, **DOWN4).load_dataset("valid")
    assert f"{dense} of 3 utterances have more label symbols than the model's CTC frames (80 ms each)" in caplog.text
    assert ("MOST UTTERANCES CANNOT BE ALIGNED" in caplog.text) == loud
    assert ("zeroes their loss: they train nothing" in caplog.text) == loud
    assert ("+model.ctc_frames_per_step=2" in caplog.text) == loud
    assert f"First: {folder / 'valid.ltr'}:1" in caplog.text


def test_a_split_ctc_cannot_align_at_all_is_refused(tmp_path):
    folder = labelled_split(tmp_path, [DENSE] * 3)
    with pytest.raises(ValueError, match=r"valid: none of the 3 utterances can be aligned by CTC: each has more label "
                                         r"symbols than the model's CTC frames \(80 ms each\)") as refused:
        task_with_model(folder, **DOWN4).load_dataset("valid")
    assert "+model.ctc_frames_per_step=2" in str(refused.value) and "model.input_downsample_factor" in str(refused.value)


def test_cif_counts_20ms_frames_as_an_upper_bound(tmp_path, caplog):
    folder = labelled_split(tmp_path, [" ".join("AB" * 26), SPARSE, SPARSE])  # 52 symbols > 49 frames
    task = finetuning_task(folder)
    task.build_model(tiny_ctc(CIF, "sew", _name="sew_ctc", cif_lambda=1.0, cif_upsample=False).cfg)
    with caplog.at_level(logging.WARNING, logger="sew_plugin.tasks.audio"):
        task.load_dataset("valid")
    assert "1 of 3 utterances have more label symbols than 20 ms frames (an upper bound" in caplog.text


@pytest.mark.slow
def test_fairseq_hydra_train_refuses_letters_80ms_frames_cannot_hold(tmp_path):
    """fairseq-hydra-train at input_downsample_factor 4: every loss would be zeroed, so training is
    refused by key; with 2 CTC frames per encoder frame the same data trains."""
    data = tmp_path / "data"
    rows = write_wav_corpus(data / "audio", [16000 + 1000 * i for i in range(10)])  # 12-19 frames of 80 ms
    for split, part in (("train", rows[:8]), ("valid", rows[8:])):
        write_manifest(data / f"{split}.tsv", data / "audio", part)
        (data / f"{split}.ltr").write_text(f"{DENSE} | A B C D\n" * len(part))  # 23 frames needed: 24 at 40 ms
    (data / "dict.ltr.txt").write_text("".join(f"{c} 1\n" for c in LETTERS))
    pre = hydra_train(tmp_path / "pre", "pretraining", "sew_tiny",
                      [f"task.data={data}", *TINY_PRETRAINING, "optimization.max_update=1"])
    assert pre.returncode == 0, pre.stderr[-3000:]
    finetuning = [f"task.data={data}", f"model.w2v_path={tmp_path / 'pre' / 'ckpt' / 'checkpoint_last.pt'}",
                  *TINY_FINETUNING, "optimization.max_update=2", "+model.input_downsample=avgpool",
                  "+model.input_downsample_factor=4"]
    refused = hydra_train(tmp_path / "x4", "finetuning", "10m", finetuning)
    assert refused.returncode != 0
    assert "ValueError: valid: none of the 2 utterances can be aligned by CTC" in refused.stderr, refused.stderr[-3000:]
    assert "+model.ctc_frames_per_step=2" in refused.stderr and "[train_inner]" not in refused.stdout
    trained = hydra_train(tmp_path / "x4_2", "finetuning", "10m", finetuning + ["+model.ctc_frames_per_step=2"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    log = trained.stdout + trained.stderr
    assert "label symbols" not in log and '"train_loss": "0"' not in log and '"train_loss"' in log
