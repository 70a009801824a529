"""Pieces of `sew infer` that need no model: batching, audio checks, references, error counts."""

import numpy as np
import pytest
import soundfile as sf

from sew_plugin.data.audio import read_audio
from sew_plugin.data.errors import DataError
from sew_plugin.infer import Utterance, plan_batches, read_references, word_error_counts


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
    assert read_references(manifest, "ltr", 2) == [["HI"], ["THE", "CAT"]]
    assert read_references(manifest, "wrd", 2) is None
    with pytest.raises(DataError, match="valid.ltr: 2 label lines for 3 manifest entries"):
        read_references(manifest, "ltr", 3)


def test_word_and_letter_error_counts():
    utts = [Utterance("a", ["THE", "CAT"], ["THE", "HAT"], 1.0), Utterance("b", [], ["HI"], 1.0)]
    we, words, le, letters = word_error_counts(utts)
    assert (we, words) == (2, 3)
    assert (le, letters) == (1 + 2, 7 + 2)  # 'THE|CAT' vs 'THE|HAT'; '' vs 'HI'


def test_pareto_front_keeps_only_undominated_points():
    from sew_plugin.sweep import Point, mark_pareto

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
def test_sweep_refuses_mixed_settings_before_loading_anything(tmp_path, argv, message):
    from sew_plugin.cli import main as sew

    with pytest.raises(SystemExit, match=message):  # the checkpoint does not even exist
        sew(["sweep", str(tmp_path / "none.pt"), str(tmp_path / "none.tsv"), *argv])
