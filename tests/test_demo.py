"""The end-to-end demo (examples/demo): its corpus split, its report, and a smoke run of every step."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "examples" / "demo"))
from corpus import build_corpus, split_sentences  # noqa: E402
from report import markdown, table_rows  # noqa: E402


def test_held_out_sentences_are_unseen_and_use_training_words_only():
    splits = split_sentences(n_valid=50, n_test=80, min_count=3, seed=0)
    assert len(splits["valid"]) == 50 and len(splits["test"]) == 80
    train = set(splits["train"])
    vocabulary = {w for s in train for w in s.split()}
    for split in ("valid", "test"):
        assert not train & set(splits[split])
        assert all(w in vocabulary for s in splits[split] for w in s.split())
    assert not set(splits["valid"]) & set(splits["test"])
    assert all(3 <= len(s.split()) <= 10 for s in train)


def test_a_corpus_folder_is_not_reused_with_other_parameters(tmp_path):
    (tmp_path / "corpus.json").write_text('{"n_valid": 1}')
    with pytest.raises(SystemExit, match="holds a corpus made with other parameters"):
        build_corpus(tmp_path, n_valid=4, n_test=6, max_train=24)
    assert not list(tmp_path.glob("audio"))  # refused before anything was written


def summary(wer, uer, rtf, params=1_500_000):
    return dict(wer=wer, uer=uer, rtf_forward=rtf, parameters=params, audio_seconds=12.0, utterances_transcribed=6)


def test_report_rows_come_from_the_summaries():
    rows = table_rows({"A": {"greedy": summary(0.5, 0.2, 0.0123), "lm": summary(0.25, 0.1, 0.0123)}})
    assert rows == [["A", "1.50M", "12.3", "50.0%", "25.0%", "20.0%"]]
    assert markdown(rows).splitlines()[2] == "| A | 1.50M | 12.3 | 50.0% | 25.0% | 20.0% |"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cmd = [sys.executable, str(REPO / "examples" / "demo" / "run.py"), "--smoke", "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return out, cmd, first


@pytest.mark.slow
def test_smoke_run_goes_through_every_step(smoke):
    out, _, first = smoke
    for model in ("sew_d", "w2v2"):
        for step in ("pretrain", "finetune"):
            log = (out / model / step / "train.log").read_text()
            assert "done training" in log, (model, step)
        for decoder in ("greedy", "lm"):
            result = json.loads((out / model / f"test_{decoder}" / "summary-checkpoint_best.pt-test.json").read_text())
            assert result["utterances_transcribed"] == result["utterances_in_manifest"] == 6
            assert result["parameters"] > 0 and result["forward_seconds"] > 0
    table = (out / "results.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[-2:]] == ["| SEW-D demo size (this plugin)", "| wav2vec 2.0 demo size (fairseq)"]
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[sew_d]" in first.stdout and "[w2v2]" in first.stdout  # training progress is shown


@pytest.mark.slow
def test_a_rerun_resumes_from_the_finished_steps(smoke):
    out, cmd, _ = smoke
    (out / "results.md").unlink()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done before, skipped") == 4
    assert "fairseq-hydra-train" not in again.stdout and "sew manifest" not in again.stdout
    assert (out / "results.md").exists()
