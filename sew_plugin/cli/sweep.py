"""``sew sweep``: one checkpoint at several operating points: WER, forward time and MACs, and the Pareto set.

The model is loaded once; each point fixes a St-SEW configuration (S_f, S_k, S_q) with ``--points``,
a CIF lambda with ``--cif-lambdas`` (the table gives the resulting mean frame period), or an
early-exit threshold with ``--exit-policy`` and ``--thresholds`` (the layout of Zaiem et al.'s
table: threshold, mean exit layer, WER, time), and transcribes the whole manifest as ``sew infer``
does (same decoders, every utterance counted). Each batch of each point runs ``--warmup`` untimed
forwards before its timed one: every new batch shape has first-call costs (allocations, kernel
choices), and without this the first point carried them, so the order of the points changed their
times. The forward work of a sweep is doubled; its times are steady-state. MACs are counted with
torch's ``FlopCounterMode`` on 10 s of audio at each St-SEW point (an exit policy's compute depends on the utterance: its mean exit
layer says it). A point is on the Pareto front when no other point is at least as fast and at least
as accurate, and strictly better in one of them.

    sew sweep ckpt.pt data/dev_other.tsv --points 1,1,1 2,1,1 2,2,1 2,2,2 --out sweep/
    sew sweep ckpt.pt data/dev_other.tsv --cif-lambdas 0 0.5 1 1.5 --out sweep/
    sew sweep ckpt.pt data/dev_other.tsv --exit-policy entropy --thresholds 0.01 0.03 0.06 --out sweep/

writes ``sweep.md``, ``sweep.csv`` and ``sweep.png`` (WER against forward time) in ``--out``.
"""

from pathlib import Path

from ..inference.reports import scatter_png, write_tables
from ..inference.sweep import sweep, to_markdown
from . import infer
from .infer import add_decoding_arguments
from .options import add_overwrite_argument, check_outputs


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=Path, help="fine-tuned CTC checkpoint: St-SEW (--points) or with exits (--thresholds)")
    p.add_argument("manifest", type=Path, help="fairseq manifest (.tsv) with labels beside it")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--points", nargs="+", help="St-SEW operating points 'S_f,S_k,S_q'")
    group.add_argument("--cif-lambdas", nargs="+", type=float, help="CIF lambdas in [0, 2)")
    group.add_argument("--thresholds", nargs="+", type=float, help="early-exit thresholds of --exit-policy")
    p.add_argument("--out", type=Path, help="write sweep.md, sweep.csv and sweep.png here")
    add_overwrite_argument(p, "the tables and plot in --out")
    add_decoding_arguments(p)


def main(args) -> int:
    if args.thresholds and args.exit_policy in (None, "layer"):
        raise SystemExit("sew sweep: error: --thresholds needs --exit-policy entropy, similarity or nbest")
    if args.exit_policy and not args.thresholds:
        raise SystemExit("sew sweep: error: --exit-policy goes with --thresholds")
    if args.exit_layer is not None:
        raise SystemExit("sew sweep: error: --exit-layer: sew sweep runs --thresholds of --exit-policy entropy, "
                         "similarity or nbest; one exit layer is sew infer --exit-policy layer --exit-layer K")
    infer.check_decoder_options(args, "sweep")
    if args.out:
        check_outputs("sweep", args.out, ["sweep.md", "sweep.csv", "sweep.png"], args.overwrite)
    inputs = infer.labelled_inputs(args, "sweep")  # the WER column needs references
    model, decoder, normalize = infer.load(args, "sweep", args.manifest.parent)
    kind = "points" if args.points else "cif_lambdas" if args.cif_lambdas else "thresholds"

    def apply(setting):
        if args.points:
            infer.operating_point(model, setting, "sweep", "--points")
        elif args.cif_lambdas:
            infer.cif_lambda(model, setting, "sweep", "--cif-lambdas")
        else:
            infer.exit_policy(model, args, decoder, setting, "sweep")

    for setting in args.points or args.cif_lambdas or args.thresholds:  # every one refused now, not midway
        apply(setting)

    with infer.decoding_workers(args, decoder) as decoding:
        points = sweep(model, args.manifest, decoding, kind, args.points or args.cif_lambdas or args.thresholds, apply,
                       args.labels, normalize, infer.batching(args, warm_every_batch=True), args.device,
                       log=lambda line: print(line, flush=True), inputs=inputs)
    setting_name = ("operating point" if args.points else "CIF lambda" if args.cif_lambdas
                    else f"{args.exit_policy} threshold")
    table = to_markdown(points, setting_name)
    print(f"\n{table}")
    if args.out:
        decoded = ", ".join(f"{k} {v}" for k, v in infer.decoder_settings(args).items())
        write_tables(args.out, "sweep", f"{args.checkpoint} on {args.manifest} ({decoded}; {args.dtype})", table, points)
        scatter_png([("Pareto front" if p.pareto else "dominated", p.point, p.forward_ms_per_s, 100 * p.wer)
                     for p in points], args.out / "sweep.png",
                    "forward time per second of audio (ms)", "WER (%)", f"{args.checkpoint.name}: {setting_name}s")
    return 0
