"""The end-to-end demo (examples/demo): its corpus split, its report, and a smoke run of every step."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "examples" / "demo"))
from corpus import build_corpus, split_sentences  # noqa: E402
from report import Row, lm_weights, markdown, read_sweep, spread_markdown, summary_row, sweep_rows  # noqa: E402

from sew_plugin.inference.reports import write_tables  # noqa: E402
from sew_plugin.inference.sweep import Point  # noqa: E402


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
    row = summary_row("A", summary(0.5, 0.2, 0.0123), summary(0.25, 0.1, 0.0456),
                      lm_weights({"lm_weight": 1.5, "word_score": -1.0}))
    assert row.cells() == ["A", "-", "1.50M", "12.3", "50.0%", "25.0%", "1.5, -1", "20.0%"]  # the greedy run's forward
    assert markdown([row]).splitlines()[2] == "| A | - | 1.50M | 12.3 | 50.0% | 25.0% | 1.5, -1 | 20.0% |"


def test_sweep_rows_pair_the_greedy_and_lm_sweeps_point_by_point(tmp_path):
    def sweep_csv(name, wers):
        points = [Point(p, wer, wer / 3, ms, parameters=2_000_000) for p, wer, ms in zip(["1,1,1", "2,2,2"], wers, [8.0, 4.5])]
        write_tables(tmp_path / name, "sweep", "", "", points)
        return read_sweep(tmp_path / name / "sweep.csv")

    rows = sweep_rows("St", sweep_csv("greedy", [0.6, 0.7]), sweep_csv("lm", [0.2, 0.3]), label=lambda p: f"({p['point']})",
                      mark=lambda p: p["point"][-1], weights="2, 0")
    assert [r.mark for r in rows] == ["1", "2"]
    assert [r.cells() for r in rows] == [["St", "(1,1,1)", "2.00M", "8.0", "60.0%", "20.0%", "2, 0", "20.0%"],
                                         ["St", "(2,2,2)", "2.00M", "4.5", "70.0%", "30.0%", "2, 0", "23.3%"]]
    with pytest.raises(ValueError, match="different points"):
        sweep_rows("St", sweep_csv("greedy", [0.6, 0.7]), sweep_csv("lm", [0.2, 0.3])[:1])


def test_spread_counts_the_seeds_where_the_first_model_is_ahead():
    def draw(a_lm, b_lm, a_ms):
        return [Row("A", "", 1, a_ms, 0.5, a_lm, 0.1), Row("B", "", 1, 5.0, 0.6, b_lm, 0.1),
                Row("A", "(2,2,2)", 1, 1.0, 0.9, 0.9, 0.5)]  # an operating point: not the model's row

    text = spread_markdown({1: draw(0.20, 0.25, 4.0), 2: draw(0.30, 0.25, 4.0), 3: draw(0.22, 0.25, 6.0)}, "A", "B")
    assert "| 2 | 50.0% | 30.0% | 4.0 | 60.0% | 25.0% | 5.0 |" in text
    assert "A: WER with LM 20.0-30.0% (spread 10.0 points)" in text and "B: WER with LM 25.0-25.0%" in text
    assert "for 1 of 3 seeds" in text  # seed 2 is worse with the LM, seed 3 slower


def test_a_run_folder_refuses_another_seed(tmp_path):
    import run

    run.claim(tmp_path, 1, False)
    run.claim(tmp_path, 1, False)  # the same draw resumes
    with pytest.raises(SystemExit, match="holds a run made with"):
        run.claim(tmp_path, 2, False)
    (tmp_path / "old" / "sew_d").mkdir(parents=True)  # a run from before run.json: its seed is unknown
    with pytest.raises(SystemExit, match="did not record its seed"):
        run.claim(tmp_path / "old", 1, False)


def test_summaries_timed_otherwise_than_the_sweeps_are_refused(tmp_path):
    import run

    for name in run.COMPARED:
        for decoder in ("greedy", "lm"):
            path = run.summary_file(tmp_path, name, decoder)
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({**summary(0.5, 0.2, 0.01), "warmup_every_batch": False}))
    with pytest.raises(SystemExit, match="was not timed with --warmup-every-batch"):
        run.result_rows(tmp_path, {})


def test_results_decoded_with_other_weights_are_decoded_again(tmp_path, monkeypatch):
    import csv

    import run

    calls = []

    def sew(command, *args):  # records the step and leaves what a finished step leaves
        args = list(map(str, args))
        calls.append((command, args[args.index("--results-dir" if command == "infer" else "--out") + 1]))
        if command == "sweep":
            first = args.index("--points" if "--points" in args else "--thresholds") + 1
            points = args[first:args.index("--out")]
            with open(Path(calls[-1][1]) / "sweep.csv", "w", newline="") as f:
                csv.writer(f).writerows([["point"], *[[p] for p in points]])

    def tune(sew_d_weight):
        for name in run.MODELS:
            (tmp_path / name / "tune_lm").mkdir(parents=True, exist_ok=True)
            weight = sew_d_weight if name == "sew_d" else 1.0
            (tmp_path / name / "tune_lm" / "best.json").write_text(json.dumps({"lm_weight": weight, "word_score": 0.0}))
        for folder in [run.summary_file(tmp_path, n, d).parent for n in run.COMPARED for d in ("greedy", "lm")] + [
                run.sweep_dir(tmp_path, s, d) for s in ("st_sew", "exits") for d in ("greedy", "lm")]:
            folder.mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(run, "sew", sew)
    tune(1.5)
    run.evaluate(tmp_path, tmp_path / "data")
    assert len(calls) == 8  # every decoding: 2 models and 2 sweeps, greedy and LM
    calls.clear()
    run.evaluate(tmp_path, tmp_path / "data")
    assert calls == []  # all of them finished with these weights
    tune(2.0)  # SEW-D's tuning chose another pair: its LM results and the exits' are stale
    run.evaluate(tmp_path, tmp_path / "data")
    assert sorted(calls) == [("infer", str(run.summary_file(tmp_path, "sew_d", "lm").parent)),
                             ("sweep", str(run.sweep_dir(tmp_path, "exits", "lm")))]


def test_data_made_with_another_lm_order_is_refused(tmp_path):
    import run

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "DONE").write_text('{"lm_order": 3}')
    run.prepare_data(tmp_path / "corpus", tmp_path / "data", 3)  # finished: nothing to do
    with pytest.raises(SystemExit, match="was made with"):
        run.prepare_data(tmp_path / "corpus", tmp_path / "data", 4)


def test_seeds_run_one_draw_each_in_its_folder_and_write_the_spread(tmp_path, monkeypatch):
    import run

    draws = []

    def one_draw(out, data, seed, args):
        draws.append((out, data, seed))
        return [Row(run.MODELS["sew_d"], "", 1, 4.0, 0.5, 0.2 + seed / 100, 0.1), Row(run.MODELS["w2v2"], "", 1, 5.0, 0.6, 0.25, 0.1)]

    monkeypatch.setattr(run, "build_corpus", lambda out, **_: {})
    monkeypatch.setattr(run, "prepare_data", lambda *_: None)
    monkeypatch.setattr(run, "one_draw", one_draw)
    run.main(["--seeds", "1", "2", "--out", str(tmp_path)])
    assert draws == [(tmp_path / "seed-1", tmp_path / "data", 1), (tmp_path / "seed-2", tmp_path / "data", 2)]
    assert "for 2 of 2 seeds" in (tmp_path / "spread.md").read_text()
    with pytest.raises(SystemExit):
        run.main(["--seeds", "1", "1", "--out", str(tmp_path)])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cmd = [sys.executable, str(REPO / "examples" / "demo" / "run.py"), "--smoke", "--seed", "2", "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return out, cmd, first


@pytest.mark.slow
def test_smoke_run_goes_through_every_step(smoke):
    out, _, first = smoke
    steps = {"sew_d": ("pretrain", "finetune", "exits"), "w2v2": ("pretrain", "finetune"), "st_sew": ("pretrain", "finetune")}
    for model, names in steps.items():
        for step in names:
            log = (out / model / step / "train.log").read_text()
            assert "done training" in log, (model, step)
            assert "'seed': 2," in log and "'seed': 1," not in log, (model, step)  # --seed reaches every training
    for model in ("sew_d", "w2v2"):
        for decoder in ("greedy", "lm"):
            result = json.loads((out / model / f"test_{decoder}" / "summary-checkpoint_best.pt-test.json").read_text())
            assert result["utterances_transcribed"] == result["utterances_in_manifest"] == 6
            assert result["parameters"] > 0 and result["forward_seconds"] > 0
    for sweep, count in ((out / "st_sew" / "sweep_lm", 4), (out / "sew_d" / "exits_greedy", 4)):
        points = read_sweep(sweep / "sweep.csv")
        assert len(points) == count and all(int(p["parameters"]) > 0 for p in points)
    tuned = {m: json.loads((out / m / "tune_lm" / "best.json").read_text()) for m in ("sew_d", "w2v2", "st_sew")}
    assert all(t["utterances"] == 4 and t["manifest"].endswith("valid.tsv") for t in tuned.values())  # on validation
    assert tuned["st_sew"]["operating_point"] == "1,1,1"
    for model in ("sew_d", "w2v2"):  # the test sentences are decoded at them
        lm = json.loads((out / model / "test_lm" / "summary-checkpoint_best.pt-test.json").read_text())["decoder"]
        assert (lm["decoder"], lm["lm_weight"], lm["word_score"]) == ("kenlm", tuned[model]["lm_weight"], tuned[model]["word_score"])
    for sweep, model in (("st_sew/sweep_lm", "st_sew"), ("sew_d/exits_lm", "sew_d")):  # and the sweeps at theirs
        preamble = (out / sweep / "sweep.md").read_text().splitlines()[0]
        assert f"lm_weight {tuned[model]['lm_weight']}, word_score {tuned[model]['word_score']}" in preamble, preamble
    lines = (out / "results.md").read_text().splitlines()[-10:]
    weights = {m: f"{t['lm_weight']:g}, {t['word_score']:g}" for m, t in tuned.items()}  # each row decoded at its model's
    assert [line.split(" | ")[6] for line in lines] == [weights["sew_d"], weights["w2v2"]] + [weights["st_sew"]] * 4 + [weights["sew_d"]] * 4
    table = [line.split(" | ")[:2] for line in lines]
    assert table[:2] == [["| SEW-D demo size (this plugin)", "-"], ["| wav2vec 2.0 demo size (fairseq)", "-"]]
    assert [point for _, point in table[2:6]] == ["(1,1,1)", "(2,1,1)", "(2,2,1)", "(2,2,2)"]
    assert all(model == "| SEW-D + early exit (entropy)" and point.startswith("entropy < ") for model, point in table[6:])
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[sew_d]" in first.stdout and "[w2v2]" in first.stdout and "[st_sew]" in first.stdout  # progress is shown


@pytest.mark.slow
def test_a_rerun_resumes_from_the_finished_steps(smoke):
    out, cmd, _ = smoke
    (out / "results.md").unlink()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done before, skipped") == 7
    assert "fairseq-hydra-train" not in again.stdout and "sew manifest" not in again.stdout
    assert "sew sweep" not in again.stdout and "sew infer" not in again.stdout and "sew tune-lm" not in again.stdout
    assert (out / "results.md").exists()
