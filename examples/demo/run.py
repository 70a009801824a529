"""The end-to-end demo: synthesised speech -> pre-training -> CTC fine-tuning -> decoding -> one table.

Run from the repository root (``make demo`` does, after installing)::

    python examples/demo/run.py [--out demo_out] [--smoke]

Steps, each skipped when a rerun finds it finished (a killed run resumes; fairseq itself resumes an
interrupted training from its ``checkpoint_last.pt``):

1. ``corpus``: English sentences spoken by espeak-ng (``corpus.py``), cached in ``OUT/corpus``.
2. ``data``: ``sew manifest``, ``sew labels``, ``sew lexicon`` and ``sew lm`` write ``OUT/data``.
3. per model (a tiny SEW-D and a tiny fairseq wav2vec 2.0, trained side by side, one CPU thread
   each): ``fairseq-hydra-train`` pre-training, then CTC fine-tuning, with the configs in
   ``configs/`` beside this file.
4. ``sew infer`` on the held-out test sentences, greedy and with the lexicon + KenLM beam decoder.
5. ``OUT/results.md`` and ``OUT/results.png``: parameters, forward time per second of audio, WER.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import build_corpus  # noqa: E402
from report import write_report  # noqa: E402

from sew_plugin import USER_DIR  # noqa: E402

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MODELS = {"sew_d": "SEW-D demo size (this plugin)", "w2v2": "wav2vec 2.0 demo size (fairseq)"}
# Decoder settings, chosen on the validation sentences (see examples/demo/README.md).
LM_DECODING = ["--lm-weight", "0.5", "--word-score", "0", "--beam", "50"]
# --smoke: a few updates of each step on a few utterances, to check that the recipe runs
SMOKE_CORPUS = dict(n_valid=4, n_test=6, max_train=24)
SMOKE_TRAINING = ["optimization.max_update=3", "checkpoint.save_interval_updates=2", "common.log_interval=1"]
# fairseq's log lines worth showing while training (all of them go to the step's log file), and
# the figures of them worth a glance
PROGRESS = re.compile(r"\[(train_inner|train|valid)\]|done training|Error|error:")
FIGURES = ("num_updates", "loss", "accuracy", "uer", "wer", "lr")


def progress(line: str) -> str:
    """A compact form of a fairseq log line: its stage and the figures in ``FIGURES``."""
    stage = re.search(r"\[(train_inner|train|valid)\]", line)
    pairs = dict(re.findall(r"(\w+)[= ]([-0-9.e]+)(?:,| \||$)", line.split("] - ")[-1]))
    shown = [f"{k} {pairs[k]}" for k in FIGURES if k in pairs]
    if stage and shown:
        return f"{stage.group(1)}: " + ", ".join(shown)
    return line.split("] - ")[-1].rstrip()[:160]


def stream(cmd, log: Path, prefix: str, threads: int):
    """Run ``cmd``, writing all output to ``log`` and showing progress lines; raise if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    print(f"{prefix} $ {' '.join(map(str, cmd))}", flush=True)
    with open(log, "a") as f, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                               text=True, env=env) as proc:
        for line in proc.stdout:
            f.write(line)
            if PROGRESS.search(line):
                print(f"{prefix} {progress(line)}", flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{prefix} failed (exit {proc.returncode}); the full log is {log}")


def finished(step_dir: Path) -> bool:
    return (step_dir / "DONE").exists()


def train(step_dir: Path, config: str, overrides, prefix: str, threads: int):
    """One ``fairseq-hydra-train`` run; reruns continue from its checkpoint_last.pt."""
    if finished(step_dir):
        print(f"{prefix} {step_dir.name}: done before, skipped")
        return
    step_dir.mkdir(parents=True, exist_ok=True)
    cmd = [BIN / "fairseq-hydra-train", "--config-dir", HERE / "configs", "--config-name", config,
           f"common.user_dir={USER_DIR}", f"checkpoint.save_dir={step_dir}",
           f"hydra.run.dir={step_dir / 'hydra'}", *overrides]
    stream(cmd, step_dir / "train.log", prefix, threads)
    (step_dir / "DONE").touch()


def sew(*args):
    cmd = [BIN / "sew", *map(str, args)]
    print("$ " + " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True)


def prepare_data(corpus: Path, data: Path, lm_order: int):
    if finished(data):
        return
    if data.exists():
        shutil.rmtree(data)  # a half-written folder from an interrupted run
    for split in ("train", "valid", "test"):
        sew("manifest", corpus / "audio" / split, "--dest", data, "--split", split)
        sew("labels", data / f"{split}.tsv", corpus / f"{split}.txt", "--dest", data, "--upper")
    sew("lexicon", data / "train.wrd", "--dest", data / "lexicon.txt")
    sew("lm", data / "train.wrd", "--dest", data / "lm.arpa", "--order", lm_order)
    (data / "DONE").touch()


def model_pipeline(name: str, out: Path, data: Path, extra, threads: int):
    prefix = f"[{name}]"
    train(out / name / "pretrain", f"pretrain_{name}", [f"task.data={data}", *extra], prefix, threads)
    train(out / name / "finetune", "finetune",
          [f"task.data={data}", f"model.w2v_path={out / name / 'pretrain' / 'checkpoint_last.pt'}", *extra],
          prefix, threads)


def run_pipelines(out: Path, data: Path, extra, jobs: int):
    """Train the models, ``jobs`` at a time, splitting the CPU cores between them."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    errors = []

    def target(name):
        try:
            model_pipeline(name, out, data, extra, threads)
        except Exception as err:  # reported below, after the other model's run has finished
            errors.append(err)

    names = list(MODELS)
    for start in range(0, len(names), jobs):
        workers = [threading.Thread(target=target, args=(n,)) for n in names[start:start + jobs]]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    if errors:
        raise SystemExit("\n".join(map(str, errors)))


def summary_file(results: Path) -> Path:
    """The summary ``sew infer --results-dir RESULTS`` writes for the best checkpoint on test.tsv."""
    return results / "summary-checkpoint_best.pt-test.json"


def evaluate(out: Path, data: Path):
    """Greedy and LM decoding of the test sentences, one model after the other, all cores."""
    threads = os.cpu_count() or 1
    for name in MODELS:
        checkpoint = out / name / "finetune" / "checkpoint_best.pt"
        decoders = {"greedy": [], "lm": ["--decoder", "kenlm", "--lm", data / "lm.arpa",
                                         "--lexicon", data / "lexicon.txt", *LM_DECODING]}
        for decoder, options in decoders.items():
            results = out / name / f"test_{decoder}"
            if summary_file(results).exists():
                continue
            sew("infer", checkpoint, data / "test.tsv", "--batch-size", 8, "--threads", threads,
                "--results-dir", results, *options)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (reruns resume here)")
    parser.add_argument("--smoke", action="store_true", help="a few utterances and updates: checks that it runs")
    parser.add_argument("--jobs", type=int, default=2, help="models trained at the same time")
    parser.add_argument("--lm-order", type=int, default=3)
    args = parser.parse_args(argv)

    out = args.out.resolve()
    corpus_args = SMOKE_CORPUS if args.smoke else {}
    sizes = build_corpus(out / "corpus", **corpus_args)
    print(f"corpus: {sizes} utterances in {out / 'corpus'}")
    data = out / "data"
    prepare_data(out / "corpus", data, args.lm_order)
    run_pipelines(out, data, SMOKE_TRAINING if args.smoke else [], args.jobs)
    evaluate(out, data)
    summaries = {MODELS[name]: {d: json.loads(summary_file(out / name / f"test_{d}").read_text())
                                for d in ("greedy", "lm")} for name in MODELS}
    table = write_report(summaries, out / "results.md", out / "results.png")
    print(table)
    print(f"written: {out / 'results.md'}, {out / 'results.png'}")


if __name__ == "__main__":
    main()
