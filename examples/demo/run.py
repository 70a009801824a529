"""The end-to-end demo: synthesised speech -> pre-training -> CTC fine-tuning -> decoding -> one table.

Run from the repository root (``make demo`` does, after installing)::

    python examples/demo/run.py [--out demo_out] [--seed N] [--smoke]
    python examples/demo/run.py --seeds 1 2 3      # several draws, and their spread

Steps, each skipped when a rerun finds it finished (a killed run resumes; fairseq itself resumes an
interrupted training from its ``checkpoint_last.pt``):

1. ``corpus``: English sentences spoken by espeak-ng (``corpus.py``), cached in ``OUT/corpus``.
2. ``data``: ``sew manifest``, ``sew labels``, ``sew lexicon`` and ``sew lm`` write ``OUT/data``.
3. per model (a tiny SEW-D, a tiny fairseq wav2vec 2.0 and a tiny St-SEW, trained side by side, one
   CPU thread each): ``fairseq-hydra-train`` pre-training, then CTC fine-tuning, with the configs in
   ``configs/`` beside this file; for SEW-D then early-exit heads on its frozen fine-tuned model.
4. ``sew tune-lm`` chooses each model's LM weight and word score on the validation sentences; ``sew
   infer`` on the held-out test sentences, greedy and with the lexicon + KenLM beam decoder at them;
   ``sew sweep`` over St-SEW's operating points and over the exit thresholds of SEW-D's exits.
5. ``OUT/results.md`` and ``OUT/results.png``: parameters, forward time per second of audio and WER
   of every model and operating point (``--seeds``: ``OUT/seed-N/`` per draw, ``OUT/spread.md``).
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
from report import lm_weights, read_sweep, spread_markdown, summary_row, sweep_rows, write_report  # noqa: E402

from sew_plugin import USER_DIR  # noqa: E402

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MODELS = {"sew_d": "SEW-D demo size (this plugin)", "w2v2": "wav2vec 2.0 demo size (fairseq)",
          "st_sew": "St-SEW demo size (this plugin)"}
COMPARED = ("sew_d", "w2v2")  # the headline comparison: same recipe and budget, one point each
EXITS = "SEW-D + early exit (entropy)"
# St-SEW's operating points (S_f, S_k, S_q): from the whole model (a wav2vec 2.0 at 50 Hz) to the cheapest
ST_SEW_POINTS = ["1,1,1", "2,1,1", "2,2,1", "2,2,2"]
# Early exit, two-step: MLP CTC heads after layers 2 and 4 of SEW-D's 6, trained on its frozen fine-tuned
# model; then swept over the entropy policy's thresholds (mean posterior entropy of an exit, nats)
EXIT_TRAINING = ["criterion._name=ctc_exits", "+model.exit_layers='2,4'", "+model.exit_head=mlp",
                 "+model.exit_training=exits_only", "optimization.lr=[0.002]"]
EXIT_UPDATES = 600
EXIT_THRESHOLDS = ["0.3", "0.38", "0.46", "0.6"]  # from a sweep on the validation sentences
# The beam decoder's width; its LM weight and word score are chosen per model by ``sew tune-lm`` on the
# validation sentences (its default grid), as wav2vec 2.0 chose them per model on dev-other
BEAM = ["--beam", "50"]
DECODED = "decoded_with.json"  # beside each decoding's results: the decoder options they were made with
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


class Training:
    """How this run trains: its seed, smoke settings and threads per ``fairseq-hydra-train``."""

    def __init__(self, data: Path, seed: int, smoke: bool, threads: int):
        self.threads = threads
        self.common = [f"task.data={data}", f"common.seed={seed}", *(SMOKE_TRAINING if smoke else [])]
        self.exit_updates = [] if smoke else [f"optimization.max_update={EXIT_UPDATES}"]

    def run(self, step_dir: Path, config: str, overrides, prefix: str):
        """One ``fairseq-hydra-train`` run; reruns continue from its checkpoint_last.pt."""
        if finished(step_dir):
            print(f"{prefix} {step_dir.name}: done before, skipped")
            return
        step_dir.mkdir(parents=True, exist_ok=True)
        cmd = [BIN / "fairseq-hydra-train", "--config-dir", HERE / "configs", "--config-name", config,
               f"common.user_dir={USER_DIR}", f"checkpoint.save_dir={step_dir}",
               f"hydra.run.dir={step_dir / 'hydra'}", *overrides, *self.common]
        stream(cmd, step_dir / "train.log", prefix, self.threads)
        (step_dir / "DONE").touch()

    def pipeline(self, name: str, out: Path):
        """Pre-training and fine-tuning of one model; for SEW-D then its exit heads (two-step)."""
        prefix, pretrained = f"[{name}]", out / name / "pretrain" / "checkpoint_last.pt"
        self.run(out / name / "pretrain", f"pretrain_{name}", [], prefix)
        self.run(out / name / "finetune", "finetune", [f"model.w2v_path={pretrained}"], prefix)
        if name == "sew_d":
            self.run(out / name / "exits", "finetune",
                     [f"model.w2v_path={pretrained}", f"+model.exit_init={evaluated_checkpoint(out, name)}",
                      *EXIT_TRAINING, *self.exit_updates], prefix)


def evaluated_checkpoint(out: Path, name: str) -> Path:
    """The fine-tuned checkpoint a model is tested with: the best on the validation sentences, but
    St-SEW's last (its validation ran at randomly drawn operating points, so its "best" is a draw)."""
    return out / name / "finetune" / ("checkpoint_last.pt" if name == "st_sew" else "checkpoint_best.pt")


def sew(*args):
    cmd = [BIN / "sew", *map(str, args)]
    print("$ " + " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True)


def prepare_data(corpus: Path, data: Path, lm_order: int):
    made = {"lm_order": lm_order}
    if finished(data):
        if json.loads((data / "DONE").read_text() or "{}") != made:
            raise SystemExit(f"{data} was made with {(data / 'DONE').read_text()}, not {json.dumps(made)}: "
                             "use another --out")
        return
    if data.exists():
        shutil.rmtree(data)  # a half-written folder from an interrupted run
    for split in ("train", "valid", "test"):
        sew("manifest", corpus / "audio" / split, "--dest", data, "--split", split)
        sew("labels", data / f"{split}.tsv", corpus / f"{split}.txt", "--dest", data, "--upper")
    sew("lexicon", data / "train.wrd", "--dest", data / "lexicon.txt")
    sew("lm", data / "train.wrd", "--dest", data / "lm.arpa", "--order", lm_order)
    (data / "DONE").write_text(json.dumps(made))


def run_pipelines(out: Path, training: Training, jobs: int):
    """Train the models, ``jobs`` at a time."""
    errors = []

    def target(name):
        try:
            training.pipeline(name, out)
        except Exception as err:  # reported below, after the other models' runs have finished
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


def summary_file(out: Path, name: str, decoder: str) -> Path:
    """The summary ``sew infer --results-dir`` writes for a compared model on test.tsv."""
    return out / name / f"test_{decoder}" / f"summary-{evaluated_checkpoint(out, name).name}-test.json"


def lm_files(data: Path) -> list:
    return ["--lm", data / "lm.arpa", "--lexicon", data / "lexicon.txt"]


def tuned_lm(out: Path, data: Path, name: str) -> dict:
    """``sew tune-lm``'s choice for model ``name`` on the validation sentences (``best.json``), tuned
    now unless a finished run left it."""
    results = out / name / "tune_lm"
    if not (results / "best.json").exists():  # written last
        point = ["--operating-point", ST_SEW_POINTS[0]] if name == "st_sew" else []
        sew("tune-lm", evaluated_checkpoint(out, name), data / "valid.tsv", *lm_files(data), *BEAM, *point,
            "--threads", os.cpu_count() or 1, "--out", results, "--overwrite")
    return json.loads((results / "best.json").read_text())


def decoders(data: Path, tuned: dict) -> dict:
    """Greedy, and the beam search at ``tuned``'s LM weight and word score."""
    return {"greedy": [], "lm": ["--decoder", "kenlm", *lm_files(data), *BEAM, "--lm-weight", tuned["lm_weight"],
                                 "--word-score", tuned["word_score"]]}


def decoded_with(results: Path, options: list) -> bool:
    """Whether the results in ``results`` were decoded with ``options`` (``DECODED``, written after
    them): a rerun whose tuning chose other weights, or an older run's folder, decodes again."""
    return (results / DECODED).exists() and json.loads((results / DECODED).read_text()) == list(map(str, options))


def record_decoding(results: Path, options: list) -> None:
    (results / DECODED).write_text(json.dumps(list(map(str, options))))


def sweep_dir(out: Path, sweep: str, decoder: str) -> Path:
    """Where ``sew sweep`` writes St-SEW's points (``sweep`` "st_sew") or the exits' thresholds ("exits")."""
    return out / "st_sew" / f"sweep_{decoder}" if sweep == "st_sew" else out / "sew_d" / f"exits_{decoder}"


def swept(results: Path, points) -> bool:
    """Whether ``results`` holds a finished ``sew sweep`` over exactly ``points``."""
    return (results / "sweep.csv").exists() and [p["point"] for p in read_sweep(results / "sweep.csv")] == list(points)


def evaluate(out: Path, data: Path) -> dict:
    """Each model's LM weights tuned on the validation sentences; then greedy and LM decoding of the
    test sentences: each compared model, St-SEW's points, SEW-D's exit thresholds; one after the
    other, all cores. Every forward is timed as ``sew sweep`` times it. The tuned weights, by model."""
    tuned = {name: tuned_lm(out, data, name) for name in MODELS}
    common = [data / "test.tsv", "--batch-size", 8, "--threads", os.cpu_count() or 1, "--overwrite"]
    for decoder in ("greedy", "lm"):
        for name in COMPARED:
            results, options = summary_file(out, name, decoder).parent, decoders(data, tuned[name])[decoder]
            if not decoded_with(results, options):  # recorded last: an interrupted run is done again
                sew("infer", evaluated_checkpoint(out, name), *common, "--warmup-every-batch",
                    "--results-dir", results, *options)
                record_decoding(results, options)
        # (checkpoint, its setting option, the points, whose tuned LM weights): St-SEW's own (tuned at
        # its whole point), and for the exits SEW-D's (their final exit is the SEW-D model itself)
        sweeps = {"st_sew": (evaluated_checkpoint(out, "st_sew"), ["--points"], ST_SEW_POINTS, "st_sew"),
                  "exits": (out / "sew_d" / "exits" / "checkpoint_last.pt",
                            ["--exit-policy", "entropy", "--thresholds"], EXIT_THRESHOLDS, "sew_d")}
        for sweep, (checkpoint, option, points, weights_of) in sweeps.items():
            results, options = sweep_dir(out, sweep, decoder), decoders(data, tuned[weights_of])[decoder]
            if not (swept(results, points) and decoded_with(results, options)):
                sew("sweep", checkpoint, *common, *option, *points, "--out", results, *options)
                record_decoding(results, options)
    return tuned


def result_rows(out: Path, tuned: dict):
    """The table's rows: the two models compared, St-SEW's points, SEW-D with early exit; ``tuned``:
    each model's LM weights."""
    summaries = {name: {d: json.loads(summary_file(out, name, d).read_text()) for d in ("greedy", "lm")}
                 for name in COMPARED}
    for name, by_decoder in summaries.items():
        for d, summary in by_decoder.items():
            if not summary["warmup_every_batch"]:  # timed otherwise than the sweeps
                raise SystemExit(f"{summary_file(out, name, d)} was not timed with --warmup-every-batch: "
                                 "delete it and rerun")
    rows = [summary_row(MODELS[name], s["greedy"], s["lm"], lm_weights(tuned[name])) for name, s in summaries.items()]
    rows += sweep_rows(MODELS["st_sew"], *(read_sweep(sweep_dir(out, "st_sew", d) / "sweep.csv") for d in ("greedy", "lm")),
                       label=lambda p: f"({p['point']})", weights=lm_weights(tuned["st_sew"]))
    rows += sweep_rows(EXITS, *(read_sweep(sweep_dir(out, "exits", d) / "sweep.csv") for d in ("greedy", "lm")),
                       label=lambda p: f"entropy < {p['point']}: mean exit layer {float(p['mean_exit_layer']):.1f}",
                       mark=lambda p: f"H < {p['point']}", weights=lm_weights(tuned["sew_d"]))
    greedy = summaries["sew_d"]["greedy"]
    return rows, f"{greedy['utterances_transcribed']} utterances, {greedy['audio_seconds']:.1f} s of audio"


def claim(out: Path, seed: int, smoke: bool):
    """Record what ``out`` holds; refuse to resume a run of another seed or size there, or one that
    did not record its seed (made before ``run.json`` existed)."""
    spec, run = out / "run.json", {"seed": seed, "smoke": smoke}
    if spec.exists() and json.loads(spec.read_text()) != run:
        raise SystemExit(f"{out} holds a run made with {spec.read_text().strip()}, not {json.dumps(run)}: "
                         "use another --out")
    if not spec.exists() and any((out / name).exists() for name in MODELS):
        raise SystemExit(f"{out} holds a run that did not record its seed (no {spec.name}): use another --out")
    out.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps(run))


def one_draw(out: Path, data: Path, seed: int, args):
    """Train, evaluate and report one draw in ``out``; its rows."""
    claim(out, seed, args.smoke)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    run_pipelines(out, Training(data, seed, args.smoke, threads), args.jobs)
    rows, test_set = result_rows(out, evaluate(out, data))
    print(write_report(rows, test_set, f"{args.lm_order}-gram", out / "results.md", out / "results.png"))
    print(f"written: {out / 'results.md'}, {out / 'results.png'}")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (reruns resume here)")
    parser.add_argument("--smoke", action="store_true", help="a few utterances and updates: checks that it runs")
    draws = parser.add_mutually_exclusive_group()
    draws.add_argument("--seed", type=int, default=1, help="the training runs' common.seed (another draw)")
    draws.add_argument("--seeds", type=int, nargs="+", help="one draw per seed, in OUT/seed-N, and their spread")
    parser.add_argument("--jobs", type=int, default=len(MODELS), help="models trained at the same time")
    parser.add_argument("--lm-order", type=int, default=3, help="order of the n-gram LM (sew lm)")
    args = parser.parse_args(argv)
    if args.seeds and len(set(args.seeds)) < len(args.seeds):
        parser.error(f"--seeds {' '.join(map(str, args.seeds))}: each seed once")

    out = args.out.resolve()
    sizes = build_corpus(out / "corpus", **(SMOKE_CORPUS if args.smoke else {}))
    print(f"corpus: {sizes} utterances in {out / 'corpus'}")
    data = out / "data"
    prepare_data(out / "corpus", data, args.lm_order)
    if not args.seeds:
        one_draw(out, data, args.seed, args)
        return
    by_seed = {seed: one_draw(out / f"seed-{seed}", data, seed, args) for seed in args.seeds}
    spread = spread_markdown(by_seed, *(MODELS[name] for name in COMPARED))
    (out / "spread.md").write_text(spread)
    print(f"{spread}written: {out / 'spread.md'}")


if __name__ == "__main__":
    main()
