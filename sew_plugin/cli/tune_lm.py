"""``sew tune-lm``: the LM weight and word score of the lexicon + KenLM beam decoder, chosen for one
checkpoint on held-out data by a grid.

The model runs once over the manifest (its greedy WER is reported too), and each pair of
``--lm-weight`` and ``--word-score`` values decodes the kept log-probabilities again with the same
KenLM model and lexicon trie; the pair with the fewest word errors wins (then the fewest letter
errors, then the first in grid order). A grid of 35 pairs costs 35 beam-search passes over the
manifest; ``--decode-workers N`` runs them in N processes at once, each utterance of a pair decoded
whole by one of them, so the grid is the one a single process finds. Tune on a validation manifest,
then test with the winner (figures here illustrative):

    sew tune-lm ckpt.pt data/dev_other.tsv --lm lm.arpa --lexicon lexicon.txt --out tune/ --decode-workers 8
    # ... best: --lm-weight 1.5 --word-score -1 (WER 10.26%)
    sew infer ckpt.pt data/test_other.tsv --decoder kenlm --lm lm.arpa --lexicon lexicon.txt \\
        --lm-weight 1.5 --word-score -1

writes ``tune-lm.md`` (WER per pair: LM weights by rows, word scores by columns), ``tune-lm.csv`` and
``best.json`` (the winning pair, its WER, the greedy WER, and the settings it was found under) in ``--out``.
"""

import argparse
import json
from pathlib import Path

from ..inference.decoding import ParallelDecoder, ViterbiDecoder
from ..inference.lm_tuning import best_point, decode_grid, edges_reached, to_markdown
from ..inference.reports import write_tables
from ..inference.settings import NBEST
from ..inference.transcribe import transcribe
from . import infer
from .infer import add_decoding_arguments, add_setting_arguments
from .options import add_overwrite_argument, check_outputs

OUTPUTS = ["tune-lm.md", "tune-lm.csv", "best.json"]


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=Path, help="fine-tuned CTC checkpoint (sew_ctc, wav2vec_ctc, ...)")
    p.add_argument("manifest", type=Path, help="held-out fairseq manifest (.tsv) with labels beside it")
    p.add_argument("--out", type=Path, help="write tune-lm.md, tune-lm.csv and best.json here")
    add_overwrite_argument(p, "the tables and best.json in --out")
    add_decoding_arguments(p, tuning=True)
    add_setting_arguments(p)


def main(args) -> int:
    for option, values in (("--lm-weight", args.lm_weight), ("--word-score", args.word_score)):
        if len(set(values)) < len(values):
            raise SystemExit(f"sew tune-lm: error: {option} {' '.join(f'{v:g}' for v in values)}: each value once")
    if args.exit_policy == "nbest" or args.nbest != NBEST:  # its exits would follow the beam search at one pair
        raise SystemExit("sew tune-lm: error: --exit-policy nbest exits by the beam search's own confidence, which "
                         "the LM weights change: tune the model without it and its --nbest (or under another policy)")
    infer.check_decoder_options(args, "tune-lm")
    if args.out:
        check_outputs("tune-lm", args.out, OUTPUTS, args.overwrite)
    inputs = infer.labelled_inputs(args, "tune-lm")
    first = argparse.Namespace(**{**vars(args), "lm_weight": args.lm_weight[0], "word_score": args.word_score[0]})
    model, decoder, normalize = infer.load(first, "tune-lm", args.manifest.parent)  # the files checked by name
    infer.apply_settings(model, decoder, args, "tune-lm")
    utterances, greedy = transcribe(model, args.manifest, ViterbiDecoder(decoder.tgt_dict), args.labels, normalize,
                                    infer.batching(args), inputs, keep_emissions=True)
    with infer.decoding_workers(first, decoder) as decoding:  # the decoder itself with one worker
        points = decode_grid(utterances, decoder, args.lm_weight, args.word_score,
                             log=lambda line: print(line, flush=True),
                             parallel=decoding if isinstance(decoding, ParallelDecoder) else None)
    best, table = best_point(points), to_markdown(points)
    print(f"\n{table}\ntranscribed {greedy.utterances_transcribed} of {greedy.utterances_in_manifest} utterances "
          f"({greedy.words} words); greedy WER {100 * greedy.wer:.2f}%\n"
          f"best: --lm-weight {best.lm_weight:g} --word-score {best.word_score:g} (WER {100 * best.wer:.2f}%)")
    edges = edges_reached(points)
    if edges:
        print(f"note: the best pair is at the grid's edge ({' and '.join(edges)}): a wider grid may find a better one")
    if args.out:
        shared = {k: v for k, v in infer.decoder_settings(first).items() if k not in ("lm_weight", "word_score")}
        preamble = (f"{args.checkpoint} on {args.manifest}: WER of the lexicon + KenLM beam decoder "
                    f"({', '.join(f'{k} {v}' for k, v in shared.items())}); greedy WER {100 * greedy.wer:.2f}%; "
                    "best in bold")
        write_tables(args.out, "tune-lm", preamble, table, points)
        found = {**shared, "lm_weight": best.lm_weight, "word_score": best.word_score,
                 "wer": best.wer, "uer": best.uer, "grid_edges": edges,
                 "greedy_wer": greedy.wer, "utterances": greedy.utterances_transcribed, "words": greedy.words,
                 "checkpoint": str(args.checkpoint), "manifest": str(args.manifest),
                 "operating_point": args.operating_point, "cif_lambda": args.cif_lambda,
                 "exit_policy": args.exit_policy, "threshold": args.threshold, "exit_layer": args.exit_layer,
                 "labels": args.labels, "dtype": args.dtype}
        (args.out / "best.json").write_text(json.dumps(found, indent=2) + "\n")
        print(f"written: {', '.join(str(args.out / name) for name in OUTPUTS)}")
    return 0
