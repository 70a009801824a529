"""``sew tune-lm``: the LM weight and word score chosen on held-out data, by a grid decoded from one
forward (hand-built emissions with the real KenLM inside flashlight-text; a tiny checkpoint on real
WAV files for the command)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sew_plugin.cli import main as sew_main
from sew_plugin.inference.decoding import BeamOptions, KenLMLexiconDecoder, ParallelDecoder, ViterbiDecoder
from sew_plugin.inference.lm_tuning import GridPoint, best_point, decode_grid, edges_reached, to_markdown
from sew_plugin.inference.settings import load_for_inference
from sew_plugin.inference.transcribe import Utterance, transcribe

from conftest import write_manifest, write_wav_corpus
from helpers import LETTERS, ctc_model, write_checkpoint
from test_decoding import emissions, tgt_dict, write_arpa, write_lexicon  # noqa: F401 (a fixture)

SEW = str(Path(sys.executable).with_name("sew"))
# acoustics a little for CAB, the reference is CAT, and the LM knows CAT far better
LEANS_TO_CAB = [{"C": 0.9}, {}, {"A": 0.9}, {}, {"B": 0.5, "T": 0.4}, {}, {"|": 0.9}]


@pytest.fixture
def files(tmp_path):
    lm = write_arpa(tmp_path / "lm.arpa", {"CAT": math.log10(0.5), "CAB": math.log10(0.001), "THE": -1.0})
    return write_lexicon(tmp_path / "lexicon.txt", ["CAT", "CAB", "THE"]), lm


def test_the_grid_finds_the_lm_weight_that_lets_the_lm_settle_the_acoustics(tgt_dict, files):  # noqa: F811
    lexicon, lm = files
    utterances = [Utterance("u0", [], ["CAT"], 1.0, emissions=emissions(tgt_dict, LEANS_TO_CAB)),
                  Utterance("u1", [], ["THE"], 1.0, emissions=emissions(tgt_dict, [{"T": .9}, {"H": .9}, {"E": .9}, {"|": .9}]))]
    decoder = KenLMLexiconDecoder(tgt_dict, lexicon, lm, BeamOptions(beam=10, lm_weight=0.0, word_score=0.0))
    points = decode_grid(utterances, decoder, [0.0, 2.0, 3.0], [-1.0, 0.0], log=lambda _: None)
    assert [(p.lm_weight, p.word_score) for p in points] == [(w, s) for w in (0.0, 2.0, 3.0) for s in (-1.0, 0.0)]
    assert [p.word_errors for p in points[:2]] == [1, 1]  # no LM: the acoustics say CAB
    assert [p.word_errors for p in points[2:]] == [0, 0, 0, 0] and all(p.words == 2 for p in points)
    best = best_point(points)
    assert (best.lm_weight, best.word_score) == (2.0, -1.0)  # the first of the equals, in grid order
    assert sum(p.best for p in points) == 1
    for p in points:  # each point is the decoder built afresh with its options (shared trie and LM)
        fresh = KenLMLexiconDecoder(tgt_dict, lexicon, lm, BeamOptions(beam=10, lm_weight=p.lm_weight, word_score=p.word_score))
        errors = sum(fresh.decode(u.emissions) != u.ref for u in utterances)
        assert errors == p.word_errors
    table = to_markdown(points).splitlines()
    assert table[0] == "| LM weight \\ word score | -1 | 0 |" and table[2] == "| 0 | 50.00% | 50.00% |"
    assert table[3] == "| 2 | **0.00%** | 0.00% |"
    with pytest.raises(ValueError, match="without kept emissions or references"):
        decode_grid([Utterance("u2", [], ["CAT"], 1.0)], decoder, [1.0], [0.0])
    with pytest.raises(ValueError, match="the references hold no words"):
        decode_grid([Utterance("u3", [], [], 1.0, emissions=utterances[0].emissions)], decoder, [1.0], [0.0])


def test_the_grid_in_worker_processes_is_the_serial_grid(tgt_dict, files):  # noqa: F811
    lexicon, lm = files
    frames = [emissions(tgt_dict, LEANS_TO_CAB), emissions(tgt_dict, [{"T": .9}, {"H": .9}, {"E": .9}, {"|": .9}]),
              emissions(tgt_dict, [{"C": .5, "T": .4}, {"A": .9}, {"B": .5, "T": .4}, {"|": .9}])]
    utterances = [Utterance(f"u{i}", [], ref, 1.0, emissions=e) for i, (ref, e) in
                  enumerate(zip([["CAT"], ["THE"], ["CAT"]], frames))]
    decoder = KenLMLexiconDecoder(tgt_dict, lexicon, lm, BeamOptions(beam=10, lm_weight=1.0, word_score=0.0))
    grid = ([0.0, 2.0, 3.0], [-1.0, 0.0, 5.0])
    serial = decode_grid(utterances, decoder, *grid, log=lambda _: None)
    logged = []
    with ParallelDecoder(2, "kenlm", tgt_dict, lexicon, lm, decoder.options) as parallel:
        parallel_points = decode_grid(utterances, decoder, *grid, log=logged.append, parallel=parallel)
    assert parallel_points == serial
    assert len({p.word_errors for p in serial}) > 1  # the pairs decode differently: each worker used its pair's options
    assert [line.split(":")[0] for line in logged] == [f"LM weight {w:g}, word score {s:g}" for w in grid[0] for s in grid[1]]


def test_an_error_while_a_grid_is_queued_does_not_wait_for_the_queue(tgt_dict, files):  # noqa: F811
    lexicon, lm = files
    frames = emissions(tgt_dict, LEANS_TO_CAB)
    with pytest.raises(KeyboardInterrupt):
        with ParallelDecoder(1, "kenlm", tgt_dict, lexicon, lm, BeamOptions(beam=10)) as parallel:
            queued = [parallel.submit(frames, BeamOptions(beam=10, lm_weight=w)) for w in range(40)]
            raise KeyboardInterrupt  # Ctrl-C while the grid is queued
    assert sum(f.cancelled() for f in queued) >= 30  # left undecoded (a worker takes at most two at a time)


def test_a_best_pair_on_the_grids_edge_is_said():
    def grid(best):
        return [GridPoint(w, s, 0.1, 0.1, 1, 10, best=(w, s) == best) for w in (0.0, 1.0, 2.0) for s in (-1.0, 0.0, 1.0)]

    assert edges_reached(grid((1.0, 0.0))) == []  # inside
    assert edges_reached(grid((0.0, 0.0))) == []  # no LM is the weight's own bound
    assert edges_reached(grid((2.0, 1.0))) == ["LM weight 2", "word score 1"]
    assert edges_reached(grid((1.0, -1.0))) == ["word score -1"]
    assert edges_reached([GridPoint(0.5, 0.0, 0.1, 0.1, 1, 10, best=True)]) == ["LM weight 0.5"]  # a one-point grid


def test_a_retuned_decoder_keeps_its_files_and_other_options(tgt_dict, files):  # noqa: F811
    lexicon, lm = files
    decoder = KenLMLexiconDecoder(tgt_dict, lexicon, lm, BeamOptions(beam=10, lm_weight=0.0))
    tuned = decoder.with_options(BeamOptions(beam=10, lm_weight=2.0))
    assert tuned.lm is decoder.lm and tuned.trie is decoder.trie and tuned.options.lm_weight == 2.0
    frames = emissions(tgt_dict, LEANS_TO_CAB)
    assert decoder.decode(frames) == ["CAB"] and tuned.decode(frames) == ["CAT"]  # and the original is unchanged


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny SEW checkpoint with random weights, six real WAV files, their letters, a lexicon of the
    alphabet's words and a bigram LM."""
    folder = tmp_path_factory.mktemp("tune")
    (folder / "dict.ltr.txt").write_text("".join(f"{c} 1\n" for c in LETTERS))
    torch.manual_seed(3)
    write_checkpoint(ctc_model("sew"), folder / "ckpt.pt", folder)
    rows = write_wav_corpus(folder / "audio", [16000, 24000, 12000, 20000, 16000, 8000])
    write_manifest(folder / "valid.tsv", folder / "audio", rows)
    refs = ["SEA", "NET TEA", "ONE", "TEN SET", "EAT", "NO"]
    (folder / "valid.wrd").write_text("".join(f"{r}\n" for r in refs))
    (folder / "valid.ltr").write_text("".join(" ".join(r.replace(" ", "|")) + " |\n" for r in refs))
    words = ["SEA", "NET", "TEA", "ONE", "TEN", "SET", "EAT", "NO", "NOT", "TO", "SO", "AT", "AS", "ON", "A"]
    write_lexicon(folder / "lexicon.txt", words)
    write_arpa(folder / "lm.arpa", {w: -1.2 for w in words}, [("NET", "TEA", -0.2), ("TEN", "SET", -0.2)])
    return folder


def test_sew_tune_lm_writes_the_grid_and_its_best_as_sew_infer_decodes_them(data, tmp_path):
    out = tmp_path / "tune"
    grid = ["--lm-weight", "0", "4", "--word-score", "-4", "4"]
    run = subprocess.run([SEW, "tune-lm", data / "ckpt.pt", data / "valid.tsv", "--lm", data / "lm.arpa",
                          "--lexicon", data / "lexicon.txt", *grid, "--out", out], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "transcribed 6 of 6 utterances (8 words)" in run.stdout
    best = json.loads((out / "best.json").read_text())
    csv_rows = (out / "tune-lm.csv").read_text().splitlines()
    assert csv_rows[0] == "lm_weight,word_score,wer,uer,word_errors,words,best" and len(csv_rows) == 5
    assert f"best: --lm-weight {best['lm_weight']:g} --word-score {best['word_score']:g}" in run.stdout
    assert best["utterances"] == 6 and best["words"] == 8 and best["beam"] == 50
    assert best["grid_edges"]  # in a 2 x 2 grid every pair is on an edge, and it is said
    assert "note: the best pair is at the grid's edge" in run.stdout

    model, task, normalize = load_for_inference(data / "ckpt.pt", data, "cpu", 0, "test")
    base = KenLMLexiconDecoder(task.target_dictionary, data / "lexicon.txt", data / "lm.arpa")
    errors = {}
    for weight in (0.0, 4.0):  # the grid's figures are those of whole transcriptions at each point
        for score in (-4.0, 4.0):
            decoder = base.with_options(BeamOptions(lm_weight=weight, word_score=score))
            errors[weight, score] = transcribe(model, data / "valid.tsv", decoder, normalize=normalize)[1].word_errors
    grid_errors = {(float(r.split(",")[0]), float(r.split(",")[1])): int(r.split(",")[4]) for r in csv_rows[1:]}
    assert grid_errors == errors
    assert len(set(errors.values())) > 1  # the points differ: the grid measures something
    assert errors[best["lm_weight"], best["word_score"]] == min(errors.values())
    greedy = transcribe(model, data / "valid.tsv", ViterbiDecoder(task.target_dictionary), normalize=normalize)[1]
    assert best["greedy_wer"] == pytest.approx(greedy.wer)


def test_sew_tune_lm_with_decode_workers_writes_the_serial_grid(data, tmp_path, capsys, monkeypatch):
    common = [str(data / "ckpt.pt"), str(data / "valid.tsv"), "--lm", str(data / "lm.arpa"), "--lexicon",
              str(data / "lexicon.txt"), "--lm-weight", "0", "4", "--word-score", "-4", "0", "4"]
    submitted, submit = [], ParallelDecoder.submit
    monkeypatch.setattr(ParallelDecoder, "submit", lambda self, e, options=None: submitted.append(options) or submit(self, e, options))
    for workers in (1, 2):
        assert sew_main(["tune-lm", *common, "--decode-workers", str(workers), "--out", str(tmp_path / f"w{workers}")]) == 0
    capsys.readouterr()
    # the two-worker run handed every utterance of every pair to the workers, under that pair's options
    assert len(submitted) == 6 * 6 and {(o.lm_weight, o.word_score) for o in submitted} == {
        (w, s) for w in (0.0, 4.0) for s in (-4.0, 0.0, 4.0)}
    for name in ("tune-lm.csv", "tune-lm.md", "best.json"):
        assert (tmp_path / "w2" / name).read_text() == (tmp_path / "w1" / name).read_text(), name
    assert len({row.split(",")[4] for row in (tmp_path / "w1" / "tune-lm.csv").read_text().splitlines()[1:]}) > 1
    with pytest.raises(SystemExit):
        sew_main(["tune-lm", *common, "--decode-workers", "0"])
    assert "--decode-workers" in capsys.readouterr().err


def test_sew_tune_lm_refuses_what_it_cannot_tune(data, tmp_path, capsys):
    common = [str(data / "ckpt.pt"), str(data / "valid.tsv"), "--lm", str(data / "lm.arpa"),
              "--lexicon", str(data / "lexicon.txt")]
    with pytest.raises(SystemExit):
        sew_main(["tune-lm", *common, "--lm-weight", "nan"])
    assert "--lm-weight: must be >= 0.0 and finite, got nan" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sew_main(["tune-lm", *common, "--word-score", "inf"])
    assert "--word-score: must be a finite number, got inf" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sew_main(["tune-lm", *common, "--labels", "wrd", "--decoder", "viterbi"])
    assert "unrecognized arguments: --decoder viterbi" in capsys.readouterr().err  # the beam decoder is what it tunes
    (tmp_path / "best.json").write_text("{}")
    with pytest.raises(SystemExit) as refused:
        sew_main(["tune-lm", *common, "--out", str(tmp_path)])
    assert refused.value.code == 2 and "best.json already exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "best.json").read_text() == "{}"
    unlabelled = tmp_path / "test.tsv"
    unlabelled.write_text((data / "valid.tsv").read_text())
    assert sew_main(["tune-lm", str(data / "ckpt.pt"), str(unlabelled), *common[2:]]) == 2
    assert f"{tmp_path / 'test.ltr'}: label file not found: sew tune-lm needs references" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        sew_main(["tune-lm", *common, "--lm-weight", "1", "0.5", "1.0"])
    assert refused.value.code == 2 and "--lm-weight 1 0.5 1: each value once" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sew_main(["infer", *common[:2], "--decoder", "kenlm", *common[2:], "--lm-weight", "-1"])  # sew infer's own
    assert "--lm-weight: must be >= 0.0 and finite, got -1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sew_main(["tune-lm", *common, "--exit-policy", "nbest", "--threshold", "0.5"])
    assert "--exit-policy nbest exits by the beam search's own confidence" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the policy's option alone: refused as that, not sent to --exit-policy nbest
        sew_main(["tune-lm", *common, "--nbest", "10"])
    assert "without it and its --nbest" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an option this run would ignore, before any file is read
        sew_main(["tune-lm", *common, "--threshold", "0.5"])
    assert "--threshold is for --exit-policy entropy, similarity or nbest" in capsys.readouterr().err
