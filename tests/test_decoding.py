"""The decoders on hand-built emissions: greedy, and flashlight-text's lexicon beam search with a
tiny ARPA language model written here (the real KenLM inside flashlight-text)."""

import math

import pytest
import torch
from fairseq.data import Dictionary

from sew_plugin.data.errors import DataError
from sew_plugin.inference.decoding import BeamOptions, KenLMLexiconDecoder, ViterbiDecoder, build_decoder

LETTERS = ["|", "A", "B", "C", "T", "H", "E"]


@pytest.fixture
def tgt_dict():
    d = Dictionary()  # <s> (blank, index 0), <pad>, </s>, <unk>, then the letters
    for symbol in LETTERS:
        d.add_symbol(symbol)
    return d


def emissions(tgt_dict, frames):
    """frames: list of {symbol: probability}; the rest of the mass goes to the blank."""
    out = torch.full((len(frames), len(tgt_dict)), 1e-6)
    for t, probs in enumerate(frames):
        for symbol, p in probs.items():
            out[t, tgt_dict.index(symbol)] = p
        out[t, 0] = max(1e-6, 1 - sum(probs.values()))
    return (out / out.sum(-1, keepdim=True)).log()


def write_arpa(path, unigrams, bigrams=()):
    """An ARPA file from {word: log10 prob} and [(w1, w2, log10 prob)]; backoffs 0."""
    words = {"<s>": -99.0, "</s>": -1.0, "<unk>": -5.0, **unigrams}
    lines = ["\\data\\", f"ngram 1={len(words)}", f"ngram 2={len(bigrams)}", "", "\\1-grams:"]
    lines += [f"{p:.4f}\t{w}\t0" for w, p in words.items()]
    lines += ["", "\\2-grams:"] + [f"{p:.4f}\t{a} {b}" for a, b, p in bigrams] + ["", "\\end\\", ""]
    path.write_text("\n".join(lines))
    return path


def write_lexicon(path, words):
    path.write_text("".join(f"{w} {' '.join(w)} |\n" for w in words))
    return path


AMBIGUOUS_CA_ = [{"C": 0.9}, {}, {"A": 0.9}, {}, {"T": 0.45, "B": 0.45}, {}, {"|": 0.9}]


def test_viterbi_merges_repeats_and_drops_blanks(tgt_dict):
    frames = [{"T": 0.9}, {"H": 0.9}, {"E": 0.9}, {"E": 0.9}, {}, {"|": 0.9}, {"C": 0.9}, {"A": 0.9}, {}, {"A": 0.9}, {"T": 0.9}]
    assert ViterbiDecoder(tgt_dict).decode(emissions(tgt_dict, frames)) == ["THE", "CAAT"]


def test_beam_decoder_finds_the_words(tgt_dict, tmp_path):
    lm = write_arpa(tmp_path / "lm.arpa", {"THE": -1.0, "CAT": -1.0, "CAB": -1.0}, [("THE", "CAT", -0.3)])
    lexicon = write_lexicon(tmp_path / "lexicon.txt", ["THE", "CAT", "CAB"])
    frames = [{"T": 0.9}, {"H": 0.9}, {"E": 0.9}, {"|": 0.9}, {"C": 0.9}, {"A": 0.9}, {"T": 0.9}, {"|": 0.9}]
    decoder = KenLMLexiconDecoder(tgt_dict, lexicon, lm, BeamOptions(beam=10))
    assert decoder.decode(emissions(tgt_dict, frames)) == ["THE", "CAT"]


@pytest.mark.parametrize("favoured", ["CAT", "CAB"])
def test_the_language_model_settles_ambiguous_acoustics(tgt_dict, tmp_path, favoured):
    other = "CAB" if favoured == "CAT" else "CAT"
    lm = write_arpa(tmp_path / "lm.arpa", {favoured: math.log10(0.5), other: math.log10(0.01)})
    lexicon = write_lexicon(tmp_path / "lexicon.txt", ["CAT", "CAB"])
    decoder = KenLMLexiconDecoder(tgt_dict, lexicon, lm, BeamOptions(beam=10, lm_weight=2.0, word_score=0.0))
    assert decoder.decode(emissions(tgt_dict, AMBIGUOUS_CA_)) == [favoured]


def test_lexicon_restricts_the_output_to_known_words(tgt_dict, tmp_path):
    """Greedy spells 'CAAT'; the lexicon decoder can only say a lexicon word."""
    lm = write_arpa(tmp_path / "lm.arpa", {"CAT": -1.0})
    lexicon = write_lexicon(tmp_path / "lexicon.txt", ["CAT"])
    frames = [{"C": 0.9}, {"A": 0.9}, {}, {"A": 0.6}, {"T": 0.9}, {"|": 0.9}]
    em = emissions(tgt_dict, frames)
    assert ViterbiDecoder(tgt_dict).decode(em) == ["CAAT"]
    assert KenLMLexiconDecoder(tgt_dict, lexicon, lm).decode(em) == ["CAT"]


def test_lexicon_symbols_outside_the_dictionary_are_refused(tgt_dict, tmp_path):
    lm = write_arpa(tmp_path / "lm.arpa", {"DOG": -1.0})
    lexicon = write_lexicon(tmp_path / "lexicon.txt", ["DOG"])
    with pytest.raises(DataError, match="DOG"):
        KenLMLexiconDecoder(tgt_dict, lexicon, lm)


def test_kenlm_decoder_needs_its_files(tgt_dict, tmp_path):
    with pytest.raises(ValueError, match="--lexicon and --lm"):
        build_decoder("kenlm", tgt_dict)
    with pytest.raises(DataError, match="missing.arpa: language model not found"):
        build_decoder("kenlm", tgt_dict, lexicon=write_lexicon(tmp_path / "l.txt", ["CAT"]), lm=tmp_path / "missing.arpa")


def test_an_unusable_language_model_names_the_file(tgt_dict, tmp_path):
    bad = tmp_path / "unigram_only.arpa"
    bad.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1\t<s>\t0\n-1\t</s>\t0\n-1\tCAT\t0\n\n\\end\\\n")
    with pytest.raises(DataError, match="unigram_only.arpa: not a usable KenLM model"):
        KenLMLexiconDecoder(tgt_dict, write_lexicon(tmp_path / "l.txt", ["CAT"]), bad)
