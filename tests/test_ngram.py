"""`sew lm`: the Witten-Bell ARPA model is normalised, and KenLM reads back the same probabilities."""

import math

import pytest
from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import create_word_dict

from sew_plugin.cli import main as sew
from sew_plugin.data.ngram import UNK, WittenBellLM

SENTENCES = ["the cat sat", "the dog sat", "a cat ran", "the cat ran on the mat"]


@pytest.mark.parametrize("order", [2, 3, 4])
def test_every_history_is_a_distribution(order):
    lm = WittenBellLM([s.split() for s in SENTENCES], order)
    vocab = [w for (w,) in lm.counts[1]] + [UNK]
    for history in [(), ("<s>",), ("<s>", "the"), ("the", "cat"), ("cat",), ("never", "seen"), ("on", "the", "mat")]:
        assert sum(lm.prob(w, history) for w in vocab) == pytest.approx(1.0, abs=1e-9), history


def test_kenlm_reads_back_the_models_probabilities(tmp_path, capsys):
    (tmp_path / "train.wrd").write_text("\n".join(SENTENCES) + "\n")
    assert sew(["lm", str(tmp_path / "train.wrd"), "--dest", str(tmp_path / "lm.arpa"), "--order", "3"]) == 0
    assert "3-gram ARPA model from 4 sentences" in capsys.readouterr().out
    lm = WittenBellLM([s.split() for s in SENTENCES], 3)
    words = {w: [] for (w,) in lm.counts[1]} | {UNK: []}
    word_dict = create_word_dict(words)
    kenlm = KenLM(str(tmp_path / "lm.arpa"), word_dict)
    state, history = kenlm.start(False), ("<s>",)
    for word in ["the", "cat", "ran", "on", "the", "mat", "</s>"]:
        state, score = kenlm.score(state, word_dict.get_index(word))
        assert score == pytest.approx(math.log10(lm.prob(word, history)), abs=1e-4), word
        history += (word,)


def test_order_one_and_empty_text_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="--order must be >= 2"):
        WittenBellLM([["a"]], 1)
    (tmp_path / "empty.wrd").write_text("\n")
    assert sew(["lm", str(tmp_path / "empty.wrd"), "--dest", str(tmp_path / "lm.arpa")]) == 2
    assert "no sentences found" in capsys.readouterr().err
    assert sew(["lm", str(tmp_path / "missing.wrd"), "--dest", str(tmp_path / "lm.arpa")]) == 2
    assert "missing.wrd: text file not found" in capsys.readouterr().err
