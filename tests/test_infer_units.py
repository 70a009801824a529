"""Pieces of `sew infer` and `sew sweep` that need no trained model: batching, audio checks, references,
error counts, and what is timed (a stand-in model on a fake clock)."""

from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import write_manifest, write_wav_corpus
from sew_plugin.data.audio import read_audio
from sew_plugin.data.errors import DataError
from sew_plugin.inference.transcribe import Utterance, plan_batches, read_references, word_error_counts


@pytest.mark.parametrize("n", [1, 7, 8, 13, 16, 17])
def test_batches_cover_every_utterance_exactly_once(n):
    lengths = [1000 + 37 * ((i * 7) % n) for i in range(n)]
    batches = plan_batches(lengths, batch_size=8)
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert all(len(b) <= 8 for b in batches)
    assert [len(b) for b in batches] == [8] * (n // 8) + ([n % 8] if n % 8 else [])


def test_max_tokens_caps_padded_samples_and_keeps_an_oversized_utterance():
    lengths = [50000, 1000, 900, 800, 700]
    batches = plan_batches(lengths, batch_size=8, max_tokens=3000)
    assert batches[0] == [0]  # longer than the cap: transcribed alone, not dropped
    assert all(len(b) * max(lengths[i] for i in b) <= 3000 for b in batches[1:])
    assert sorted(i for b in batches for i in b) == list(range(5))


def test_read_audio_checks_the_file_against_the_manifest(tmp_path):
    path = tmp_path / "u.wav"
    sf.write(path, np.zeros(1600, dtype=np.float32), 16000)
    assert read_audio(path, 1600).shape == (1600,)
    with pytest.raises(DataError, match="u.wav: has 1600 samples but the manifest says 1700"):
        read_audio(path, 1700)
    with pytest.raises(DataError, match="missing.wav: audio file not found"):
        read_audio(tmp_path / "missing.wav", 1600)
    bad = np.zeros(1600, dtype=np.float32)
    bad[10] = np.nan
    sf.write(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    with pytest.raises(DataError, match="nan.wav: contains NaN"):
        read_audio(tmp_path / "nan.wav", 1600)


def test_references_must_align_with_the_manifest(tmp_path):
    manifest = tmp_path / "valid.tsv"
    (tmp_path / "valid.ltr").write_text("H I |\nT H E | C A T |\n")
    assert read_references(manifest, "ltr", 2) == read_references(manifest, None, 2) == [["HI"], ["THE", "CAT"]]
    assert read_references(tmp_path / "test.tsv", None, 2) is None  # no labels asked for, none there
    with pytest.raises(DataError, match="valid.wrd: label file not found"):
        read_references(manifest, "wrd", 2)  # asked for by name
    with pytest.raises(DataError, match="valid.ltr: 2 label lines for 3 manifest entries"):
        read_references(manifest, "ltr", 3)


def test_word_and_letter_error_counts():
    utts = [Utterance("a", ["THE", "CAT"], ["THE", "HAT"], 1.0), Utterance("b", [], ["HI"], 1.0)]
    we, words, le, letters = word_error_counts(utts)
    assert (we, words) == (2, 3)
    assert (le, letters) == (1 + 2, 7 + 2)  # 'THE|CAT' vs 'THE|HAT'; '' vs 'HI'


def test_pareto_front_keeps_only_undominated_points():
    from sew_plugin.inference.sweep import Point, mark_pareto

    points = [Point("a", 0.10, 0, 10.0, 1), Point("b", 0.12, 0, 6.0, 1), Point("c", 0.15, 0, 7.0, 1),
              Point("d", 0.10, 0, 12.0, 1), Point("e", 0.30, 0, 5.0, 1)]
    mark_pareto(points)
    assert [p.point for p in points if p.pareto] == ["a", "b", "e"]  # c: b is faster and better; d: a


@pytest.mark.parametrize("argv, message", [
    (["--thresholds", "0.1"], "--thresholds needs --exit-policy"),
    (["--thresholds", "0.1", "--exit-policy", "layer"], "--thresholds needs --exit-policy"),
    (["--points", "2,1,1", "--exit-policy", "entropy"], "--exit-policy goes with --thresholds"),
    (["--cif-lambdas", "0.5", "--exit-policy", "entropy"], "--exit-policy goes with --thresholds"),
])
def test_sweep_refuses_mixed_settings_before_loading_anything(tmp_path, capsys, argv, message):
    from sew_plugin.cli import main as sew

    with pytest.raises(SystemExit, match=message) as info:  # the checkpoint does not even exist
        sew(["sweep", str(tmp_path / "none.pt"), str(tmp_path / "none.tsv"), *argv])
    assert info.value.code == 2  # a misused option: argparse's status
    assert message in capsys.readouterr().err


class FakeClock:
    """``time.perf_counter`` for ``sew_plugin.inference.transcribe``: only the fake model moves it."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class FakeCtc(torch.nn.Module):
    """Stands in for a CTC model: a zero linear head, so all-blank (T, B, V) outputs; every forward
    advances the fake clock by its operating point's cost, and the first forward of each batch shape
    by ``FIRST_CALL`` more (what first-call allocations, thread pools and kernel choices cost a real one)."""

    FIRST_CALL = 100.0
    COST = {"1,1,1": 2.0, "2,1,1": 1.0}

    def __init__(self, clock: FakeClock):
        super().__init__()
        self.clock, self.point, self.shapes = clock, "1,1,1", set()
        self.w2v_encoder = SimpleNamespace(w2v_model=None)
        self.head = torch.nn.Linear(4, 4)  # over fairseq's 4 special symbols, <s> (the blank) first
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, source, padding_mask):
        self.clock.now += self.COST[self.point] + (self.FIRST_CALL if source.shape not in self.shapes else 0.0)
        self.shapes.add(source.shape)
        return {"encoder_out": self.head(torch.zeros(source.size(1) // 320, source.size(0), 4)), "padding_mask": None}

    def get_normalized_probs(self, net_output, log_probs):
        return net_output["encoder_out"].log_softmax(-1)


@pytest.fixture
def fake_model(monkeypatch):
    """``sew infer`` / ``sew sweep`` load a fresh ``FakeCtc`` (timed by the fake clock) instead of a checkpoint."""
    from fairseq.data import Dictionary

    from sew_plugin.cli import infer
    from sew_plugin.inference import transcribe
    from sew_plugin.inference.decoding import ViterbiDecoder

    clock = FakeClock()
    monkeypatch.setattr(transcribe, "time", clock)

    def load(args, command="infer", data=None):
        letters = Dictionary()
        for symbol in "|HI":  # the references' letters
            letters.add_symbol(symbol)
        return FakeCtc(clock), ViterbiDecoder(letters), False

    monkeypatch.setattr(infer, "load", load)

    def operating_point(model, point, command="infer", option="--operating-point"):
        if point is not None:
            model.point = point

    monkeypatch.setattr(infer, "operating_point", operating_point)  # sew sweep calls it there too


def three_utterances(tmp_path, labels=True):
    """A manifest of 1, 0.75 and 0.5 s of audio (``valid.ltr`` beside it with ``labels``)."""
    rows = write_wav_corpus(tmp_path / "audio", [16000, 12000, 8000])
    write_manifest(tmp_path / "valid.tsv", tmp_path / "audio", rows)
    if labels:
        (tmp_path / "valid.ltr").write_text("H I |\n" * 3)
    return tmp_path / "valid.tsv"


def test_sweep_times_do_not_depend_on_which_point_runs_first(tmp_path, fake_model):
    """Each point runs an untimed warm-up forward first, so the model's one-time cost lands on no
    point's time (without it, the first point carried it: 1.00x and a 42x 'speed-up' after it)."""
    import csv

    from sew_plugin.cli import main as sew

    manifest = three_utterances(tmp_path)

    def times(*argv):
        out = tmp_path / "_".join(argv)
        assert sew(["sweep", "none.pt", str(manifest), "--batch-size", "2", "--out", str(out), *argv]) == 0
        with open(out / "sweep.csv") as f:
            return {row["point"]: float(row["forward_ms_per_s"]) for row in csv.DictReader(f)}

    audio = 2.25  # seconds; two batches per point
    forward = times("--points", "1,1,1", "2,1,1")
    assert forward == times("--points", "2,1,1", "1,1,1")
    assert forward == {"1,1,1": pytest.approx(1000 * 2 * 2.0 / audio), "2,1,1": pytest.approx(1000 * 2 * 1.0 / audio)}
    first = times("--points", "1,1,1", "2,1,1", "--warmup", "0")["1,1,1"]
    # what the warm-ups keep out: the first call of each of the two batch shapes
    assert first == pytest.approx(1000 * (2 * 2.0 + 2 * FakeCtc.FIRST_CALL) / audio)


def test_infer_time_excludes_the_warm_up_and_a_missing_label_file_is_named(tmp_path, fake_model, capsys):
    import json

    from sew_plugin.cli import main as sew

    manifest = three_utterances(tmp_path, labels=False)
    assert sew(["infer", "none.pt", str(manifest), "--batch-size", "2", "--results-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert f"no references: {tmp_path / 'valid.ltr'} not found, WER is not computed" in out
    assert "excluding 1 untimed warm-up forward of the first batch" in out
    summary = json.loads((tmp_path / "r" / "summary-none.pt-valid.json").read_text())
    # the first batch's first call is warmed up; the second batch's new shape is paid, as in a real run
    assert summary["forward_seconds"] == 2 * FakeCtc.COST["1,1,1"] + FakeCtc.FIRST_CALL and summary["wer"] is None
    # --warmup-every-batch: steady-state times, as sew sweep takes them (its points compare with these)
    assert sew(["infer", "none.pt", str(manifest), "--batch-size", "2", "--warmup-every-batch",
                "--results-dir", str(tmp_path / "steady")]) == 0
    assert "excluding 1 untimed warm-up forward of every batch" in capsys.readouterr().out
    steady = json.loads((tmp_path / "steady" / "summary-none.pt-valid.json").read_text())
    assert steady["forward_seconds"] == 2 * FakeCtc.COST["1,1,1"]

    # a label file asked for by name must exist: refused before the model loads
    assert sew(["infer", "none.pt", str(manifest), "--labels", "wrd"]) == 2
    assert f"sew infer: error: {tmp_path / 'valid.wrd'}: label file not found (--labels wrd)" in capsys.readouterr().err


def test_sweep_needs_references_before_it_loads_the_model(tmp_path, fake_model, capsys, monkeypatch):
    from sew_plugin.cli import infer
    from sew_plugin.cli import main as sew

    def load(*_):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(infer, "load", load)
    manifest = three_utterances(tmp_path, labels=False)
    assert sew(["sweep", "none.pt", str(manifest), "--points", "1,1,1"]) == 2
    captured = capsys.readouterr()
    assert f"sew sweep: error: {tmp_path / 'valid.ltr'}: label file not found: sew sweep needs references" in captured.err
    assert "1,1,1: WER" not in captured.out


def test_a_stochastic_st_sew_model_needs_an_operating_point():
    """Fine-tuned stochastically, St-SEW draws a new (S_f, S_k, S_q) at every forward: transcripts
    (and WER) would change from run to run, so sew infer asks for --operating-point."""
    from sew_plugin.cli.infer import operating_point
    from sew_plugin.models.sew import SEWConfig
    from sew_plugin.models.st_sew import StSEWConfig

    from conftest import TINY_SEW
    from helpers import tiny_ctc

    stochastic = tiny_ctc(StSEWConfig(**TINY_SEW), "st_sew")
    with pytest.raises(SystemExit, match=r"sew infer: error: this St-SEW model samples its operating point .* "
                                         r"--operating-point S_f,S_k,S_q"):
        operating_point(stochastic, None)
    operating_point(stochastic, "2,2,1")
    assert stochastic.w2v_encoder.w2v_model.encoder.fixed
    operating_point(tiny_ctc(SEWConfig(**TINY_SEW), "sew"), None)  # nothing to fix


def test_sweep_reads_each_audio_header_once_for_all_its_points(tmp_path, fake_model, monkeypatch):
    """The manifest is checked before the model loads and that check serves every point (it was
    repeated at each point: one header read per row per point)."""
    from sew_plugin.cli import main as sew
    from sew_plugin.data import manifest as manifests

    reads = []
    audio_frames = manifests.audio_frames

    def counting(path, *args):
        reads.append(path.name)
        return audio_frames(path, *args)

    monkeypatch.setattr(manifests, "audio_frames", counting)
    manifest = three_utterances(tmp_path)
    assert sew(["sweep", "none.pt", str(manifest), "--points", "1,1,1", "2,1,1", "1,1,1"]) == 0
    assert sorted(reads) == ["utt000.wav", "utt001.wav", "utt002.wav"]
