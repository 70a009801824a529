"""CIF segment guidance read from files (``task.segments``): the reader and its errors, the end frames
each batch carries (filtered rows aligned, crops shifted, -1 padding), the loss the criterion logs,
and a real ``fairseq-hydra-train`` pre-training run guided by segments."""

import math
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

import sew_plugin.models  # noqa: F401
from sew_plugin.modules.side_outputs import collecting
from sew_plugin.criterions.sew_wav2vec import SewWav2vecCriterion
from sew_plugin.data.errors import DataError, DataErrors
from sew_plugin.data.manifest import read_manifest
from sew_plugin.data.segments import END_SLACK, read_segments
from sew_plugin.models.sew import SEWConfig
from sew_plugin.modules.cif import guidance_loss, rate_loss
from sew_plugin.tasks.audio import SewAudioPretrainingConfig, SewAudioPretrainingTask

from conftest import TINY_SEW, TINY_W2V2_PRETRAINING, hydra_train, pretraining_corpus, write_manifest

SCALE = 2**16  # sample i holds i / SCALE, exact in 32-bit float: a crop's first sample is its start


def index_corpus(root, lengths, segment_lines):
    """WAVs whose samples encode their index, ``train.tsv`` and ``train.seg``."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, n in enumerate(lengths):
        sf.write(root / f"u{k}.wav", np.arange(n, dtype=np.float32) / SCALE, 16000, subtype="FLOAT")
        rows.append((f"u{k}.wav", n))
    write_manifest(root / "train.tsv", root, rows)
    (root / "train.seg").write_text("".join(line + "\n" for line in segment_lines))
    return root


def segments_task(data, **cfg):
    return SewAudioPretrainingTask.setup_task(OmegaConf.structured(
        SewAudioPretrainingConfig(data=str(data), tpu=False, seed=1, segments="seg", **cfg)))


# ---------------------------------------------------------------- the reader

GOOD = ["0.1 0.25 1.0", "", "0.5 1.2 2.009"]  # rows of 1 s, 0.5 s, 2 s; 2.009 within the 10 ms slack


def segment_file(tmp_path, lines):
    write_manifest(tmp_path / "train.tsv", tmp_path, [("a.wav", 16000), ("b.wav", 8000), ("c.wav", 32000)])
    path = tmp_path / "train.seg"
    path.write_text("".join(line + "\n" for line in lines))
    return path, read_manifest(tmp_path / "train.tsv")


def test_reader_gives_each_manifest_row_its_end_times(tmp_path):
    path, manifest = segment_file(tmp_path, GOOD)
    assert [s.tolist() for s in read_segments(path, manifest, 16000)] == [[0.1, 0.25, 1.0], [], [0.5, 1.2, 2.009]]


BAD = {  # lines, line named, message fragment
    "too few lines": (GOOD[:2], 3, "2 segment lines for the 3 rows of"),
    "too many lines": (GOOD + ["0.3"], 4, "4 segment lines for the 3 rows of"),
    "not a number": (["0.1 0,2", *GOOD[1:]], 1, "'0,2' is not a number"),
    "nan": (GOOD[:2] + ["0.5 nan"], 3, "'nan' is not a finite number"),
    "repeated end": (GOOD[:2] + ["0.5 0.5"], 3, "not strictly ascending"),
    "descending": (["0.3 0.2", *GOOD[1:]], 1, "not strictly ascending"),
    "zero": (["0 0.2", *GOOD[1:]], 1, "outside the utterance (0, 1] s"),
    "negative": (GOOD[:1] + ["-0.1"] + GOOD[2:], 2, "outside the utterance (0, 0.5] s"),
    "past the end": (GOOD[:1] + [f"{0.5 + END_SLACK + 0.001}"] + GOOD[2:], 2, "outside the utterance (0, 0.5] s"),
}


@pytest.mark.parametrize("case", BAD)
def test_reader_refuses_bad_lines_by_file_and_line(tmp_path, case):
    lines, line, message = BAD[case]
    path, manifest = segment_file(tmp_path, lines)
    with pytest.raises(DataError) as info:
        read_segments(path, manifest, 16000)
    assert info.value.where == f"{path}:{line}" and message in str(info.value)
    if "lines" in case:
        assert str(manifest.path) in str(info.value)


def test_task_reports_every_bad_segment_line_at_once(tmp_path):
    data = index_corpus(tmp_path, [16000, 16000, 16000], ["0.2 x", "0.5", "0.3 0.1"])
    with pytest.raises(DataErrors) as info:
        segments_task(data).load_dataset("train")
    assert [e.where for e in info.value.errors] == [f"{data / 'train.seg'}:1", f"{data / 'train.seg'}:3"]


# ---------------------------------------------------------------- the frames each batch carries


def test_batch_carries_end_frames_of_the_rows_kept_padded_with_minus_one(tmp_path):
    # row 0 is shorter than task.min_sample_size: fairseq leaves it out, its segments must go too
    data = index_corpus(tmp_path, [8000, 24000, 16000], ["0.2 0.4", "0.1 0.34 1.0 1.5", "0.6"])
    task = segments_task(data, min_sample_size=10000, enable_padding=True)
    task.load_dataset("train")
    ds = task.datasets["train"]
    batch = ds.collater([ds[0], ds[1]])
    assert torch.equal(batch["net_input"]["source"][0], torch.arange(24000) / SCALE)  # not cropped
    # 24000 samples give 74 frames: the end at 1.5 s (frame 75) is clamped to the last one
    assert batch["net_input"]["cif_boundaries"].tolist() == [[5, 17, 50, 74], [30, -1, -1, -1]]


def expected_frames(ends, start, samples=16000, frames=49):
    """The ends within a crop of ``samples`` from ``start``, in its 20 ms frames (49 for 1 s)."""
    out = set()
    for t in ends:
        rel = t - start / 16000
        if round(rel / 0.02) >= 1 and rel <= samples / 16000 + END_SLACK:
            out.add(min(round(rel / 0.02), frames))
    return sorted(out)


def test_cropped_utterances_get_their_ends_shifted_by_the_crop(tmp_path):
    every_tenth = [round(0.1 * k, 1) for k in range(1, 21)]  # 0.1 ... 2.0 s in a 2 s utterance
    data = index_corpus(tmp_path, [32000, 24000], [" ".join(map(str, every_tenth)), "0.6 1.5"])
    task = segments_task(data, max_sample_size=16000)
    task.load_dataset("train")
    ds = task.datasets["train"]
    batch = ds.collater([ds[0], ds[1]])
    source, boundaries = batch["net_input"]["source"], batch["net_input"]["cif_boundaries"]
    starts = [int(round(float(source[i, 0]) * SCALE)) for i in range(2)]
    for i, start in enumerate(starts):  # each row is the 16000 samples from its start
        assert torch.equal(source[i], torch.arange(start, start + 16000) / SCALE)
    assert all(s > 0 for s in starts)
    rows = [expected_frames(every_tenth, starts[0]), expected_frames([0.6, 1.5], starts[1])]
    assert rows[0] != expected_frames(every_tenth, 0)  # the shift is visible
    width = boundaries.size(1)
    assert boundaries.tolist() == [r + [-1] * (width - len(r)) for r in rows]
    assert width == max(map(len, rows)) and len(rows[1]) < width  # the shorter row is -1 padded


# ---------------------------------------------------------------- the loss


def tiny_model(task, **overrides):
    cfg = SEWConfig(_name="sew", **{**TINY_SEW, "squeeze_factor": 1, "mask_length": 2, "num_negatives": 5,
                                    "quantize_targets": True, **overrides})
    return task.build_model(OmegaConf.structured(cfg))


def test_criterion_logs_the_guidance_loss_of_the_batch_boundaries(tmp_path):
    data = index_corpus(tmp_path, [24000, 20000], ["0.4 0.8 1.2", "0.3 0.9"])
    task = segments_task(data, enable_padding=True)
    task.load_dataset("train")
    ds = task.datasets["train"]
    batch = ds.collater([ds[0], ds[1]])
    model = tiny_model(task, compressor="cif", cif_lambda=1.0).train()
    criterion = SewWav2vecCriterion(task, infonce=True, loss_weights=[0.1, 10, 1.0], log_keys=[])
    with collecting() as reported:
        _, sample_size, log = criterion(model, batch)
    alpha, boundaries = reported["cif"].alpha, batch["net_input"]["cif_boundaries"]
    assert boundaries.tolist() == [[20, 40, 60], [15, 45, -1]]
    # loss_0 is the contrastive loss, loss_1..3 the extra losses weighted by criterion.loss_weights
    assert log["loss_3"] == pytest.approx(guidance_loss(alpha, boundaries).item() * sample_size, rel=1e-5)
    assert log["loss_3"] != pytest.approx(rate_loss(alpha, reported["cif"].frames, 0.25).item() * sample_size)


def test_a_model_without_cif_is_refused_naming_task_segments(tmp_path):
    task = segments_task(index_corpus(tmp_path, [16000], ["0.5"]))
    with pytest.raises(ValueError, match="task.segments=seg guides CIF compression.*model.compressor=cif"):
        tiny_model(task)


# ---------------------------------------------------------------- a real pre-training run


@pytest.mark.slow
def test_pretraining_run_is_guided_by_the_segment_files(tmp_path):
    data = pretraining_corpus(tmp_path / "data")
    for split in ("train", "valid"):  # an end every 0.2 s: alpha must fall from its initial 0.25 to 0.1
        rows = read_manifest(data / f"{split}.tsv").entries
        (data / f"{split}.seg").write_text("".join(
            " ".join(f"{0.2 * k:.1f}" for k in range(1, int(n / 16000 / 0.2) + 1)) + "\n" for _, n in rows))
    run = hydra_train(tmp_path / "run", "pretraining", "w2v2_base_cif",
                      [f"task.data={data}", *TINY_W2V2_PRETRAINING, "optimization.max_update=3", "task.segments=seg"],
                      threads=1)
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stdout + run.stderr
    cif_losses = [float(v) for v in re.findall(r'"(?:train_|valid_)?loss_3": "([0-9.]+)"', log)]
    # logged in bits (/ ln 2); the rate loss |mean alpha - 0.25| can never exceed 0.75 / ln 2
    assert len(cif_losses) >= 3 and min(cif_losses) > 0.75 / math.log(2)
