"""`sew lm`: the Witten-Bell ARPA model is normalised, and KenLM reads back the same probabilities."""

import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import create_word_dict

from sew_plugin.cli import main as sew
from sew_plugin.data.errors import DataError
from sew_plugin.data.ngram import UNK, WittenBellLM, write_arpa

SEW = str(Path(sys.executable).with_name("sew"))
SENTENCES = ["the cat sat", "the dog sat", "a cat ran", "the cat ran on the mat"]
# Transcripts such as TED-LIUM's mark unintelligible words <unk>.
UNK_SENTENCES = ["the <unk> sat", "<unk> cat ran", "the cat sat on <unk>", "<unk>"]


def read_arpa(path):
    """(header counts, entries per order as lists of word tuples), from an ARPA file."""
    header, entries, order = {}, {}, None
    for line in Path(path).read_text().splitlines():
        if line.startswith("ngram "):
            k, n = line[len("ngram "):].split("=")
            header[int(k)] = int(n)
        elif line.endswith("-grams:"):
            order = int(line[1:].split("-")[0])
            entries[order] = []
        elif line and order and not line.startswith("\\"):
            entries[order].append(tuple(line.split("\t")[1].split()))
    return header, entries


@pytest.mark.parametrize("text", [SENTENCES, UNK_SENTENCES], ids=["words", "with_unk"])
@pytest.mark.parametrize("order", [2, 3, 4])
def test_every_history_is_a_distribution(order, text):
    lm = WittenBellLM([s.split() for s in text], order)
    vocab = {w for (w,) in lm.counts[1]} | {UNK}
    for history in [(), ("<s>",), ("<s>", "the"), ("the", "cat"), ("cat",), ("never", "seen"), ("on", "the", "mat"),
                    (UNK,), ("<s>", UNK), ("the", UNK), ("on", UNK)]:
        assert sum(lm.prob(w, history) for w in vocab) == pytest.approx(1.0, abs=1e-9), history


def test_kenlm_reads_back_the_models_probabilities(tmp_path, capsys):
    (tmp_path / "train.wrd").write_text("\n".join(SENTENCES) + "\n")
    assert sew(["lm", str(tmp_path / "train.wrd"), "--dest", str(tmp_path / "lm.arpa"), "--order", "3"]) == 0
    distinct = len({w for s in SENTENCES for w in s.split()})
    assert f"3-gram ARPA model from 4 sentences, {distinct} words" in capsys.readouterr().out
    lm = WittenBellLM([s.split() for s in SENTENCES], 3)
    words = {w: [] for (w,) in lm.counts[1]} | {UNK: []}
    word_dict = create_word_dict(words)
    kenlm = KenLM(str(tmp_path / "lm.arpa"), word_dict)
    state, history = kenlm.start(False), ("<s>",)
    for word in ["the", "cat", "ran", "on", "the", "mat", "</s>"]:
        state, score = kenlm.score(state, word_dict.get_index(word))
        assert score == pytest.approx(math.log10(lm.prob(word, history)), abs=1e-4), word
        history += (word,)


@pytest.mark.parametrize("order", [2, 3])
def test_unk_in_text_is_the_one_unknown_word_and_kenlm_scores_it(tmp_path, order):
    (tmp_path / "train.wrd").write_text("\n".join(UNK_SENTENCES) + "\n")
    write_arpa([tmp_path / "train.wrd"], tmp_path / "lm.arpa", order)
    header, entries = read_arpa(tmp_path / "lm.arpa")
    assert header == {k: len(set(grams)) for k, grams in entries.items()}
    assert all(len(grams) == len(set(grams)) for grams in entries.values())
    assert Counter(entries[1])[(UNK,)] == 1 and ("the", UNK) in entries[2]
    assert all("</s>" not in gram[:-1] and "<s>" not in gram[1:] for grams in entries.values() for gram in grams)

    lm = WittenBellLM([s.split() for s in UNK_SENTENCES], order)
    tokens = sum(len(s.split()) + 1 for s in UNK_SENTENCES)  # words and </s>
    assert lm.prob(UNK, ()) == pytest.approx((4 + 1) / (tokens + 1))  # four <unk> in the text, one reserved
    word_dict = create_word_dict({w: [] for (w,) in lm.counts[1]})
    kenlm = KenLM(str(tmp_path / "lm.arpa"), word_dict)
    state, history = kenlm.start(False), ("<s>",)
    for word in ["the", UNK, "sat", "on", UNK, "</s>"]:
        state, score = kenlm.score(state, word_dict.get_index(word))
        assert score == pytest.approx(math.log10(lm.prob(word, history)), abs=1e-4), word
        history += (word,)


@pytest.mark.parametrize("symbol", ["<s>", "</s>"])
def test_sentence_boundaries_in_text_are_refused_by_line(tmp_path, symbol):
    (tmp_path / "train.wrd").write_text(f"the cat sat\nthe cat {symbol} ran\n")
    with pytest.raises(DataError, match="sentence-boundary symbol") as err:
        write_arpa([tmp_path / "train.wrd"], tmp_path / "lm.arpa")
    assert err.value.where == f"{tmp_path / 'train.wrd'}:2" and symbol in err.value.message
    assert not (tmp_path / "lm.arpa").exists()


def test_console_script_refuses_boundaries_and_counts_unk(tmp_path):
    """The installed ``sew lm``: </s> mid-line is one error line naming file:line; <unk> text gives a
    model whose header counts its distinct entries."""
    bad, good, arpa = tmp_path / "bad.wrd", tmp_path / "good.wrd", tmp_path / "lm.arpa"
    bad.write_text("the cat sat\nthe cat </s> the dog\n")
    good.write_text("\n".join(UNK_SENTENCES) + "\n")
    run = subprocess.run([SEW, "lm", str(bad), "--dest", str(arpa)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("sew lm: error: ") and "Traceback" not in run.stderr
    assert f"{bad}:2: " in run.stderr, run.stderr
    run = subprocess.run([SEW, "lm", str(good), "--dest", str(arpa), "--order", "3"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    header, entries = read_arpa(arpa)
    assert sorted(header) == [1, 2, 3] and header == {k: len(set(grams)) for k, grams in entries.items()}


def test_order_one_and_empty_text_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="--order must be >= 2"):
        WittenBellLM([["a"]], 1)
    (tmp_path / "empty.wrd").write_text("\n")
    assert sew(["lm", str(tmp_path / "empty.wrd"), "--dest", str(tmp_path / "lm.arpa")]) == 2
    assert "no sentences found" in capsys.readouterr().err
    assert sew(["lm", str(tmp_path / "missing.wrd"), "--dest", str(tmp_path / "lm.arpa")]) == 2
    assert "missing.wrd: text file not found" in capsys.readouterr().err
