"""The KenLM lexicon beam search in several processes (``--decode-workers``): time against one
process, on the same emissions, and a check that every hypothesis is the serial one; then
``sew tune-lm``'s grid (``--lm-weights`` x ``--word-scores``) decoded the same ways, and a check that
every point is the serial one.

    python examples/benchmarks/decode_workers.py --words 50000 --utterances 32 --workers 1 2

A lexicon of ``--words`` random words (2 to 10 letters) and a bigram ARPA model over random
sentences of them stand in for LibriSpeech's; the emissions are peaked random (T, V)
log-probabilities of ``--seconds`` of audio each (a 20 ms frame period). Building the decoder in each
worker (reading the lexicon and the LM) is timed apart from the decoding.
"""

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
import torch


def main():
    from fairseq.data import Dictionary

    from sew_plugin.data.ngram import write_arpa
    from sew_plugin.inference.decoding import BeamOptions, KenLMLexiconDecoder, ParallelDecoder
    from sew_plugin.inference.lm_tuning import decode_grid
    from sew_plugin.inference.transcribe import Utterance

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--words", type=int, default=50000)
    parser.add_argument("--utterances", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--beam", type=int, default=50)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", type=Path, default=Path("decode_workers_bench"))
    parser.add_argument("--lm-weights", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--word-scores", type=float, nargs="+", default=[-1.0, 0.0])
    args = parser.parse_args()

    letters = "|ETAONISRHDLUCMFWYGPBVKXJQZ'"
    vocab = Dictionary()
    for c in letters:
        vocab.add_symbol(c)
    rng = np.random.default_rng(0)
    words = set()
    while len(words) < args.words:
        words.add("".join(rng.choice(list(letters[1:-1]), rng.integers(2, 11))))
    words = sorted(words)
    args.workdir.mkdir(parents=True, exist_ok=True)
    lexicon, lm, text = args.workdir / "lexicon.txt", args.workdir / "lm.arpa", args.workdir / "text.txt"
    lexicon.write_text("".join(f"{w} {' '.join(w)} |\n" for w in words))
    text.write_text("".join(" ".join(rng.choice(words, 15)) + "\n" for _ in range(args.words // 5)))
    write_arpa([text], lm, 2, overwrite=True)

    torch.manual_seed(0)
    frames = int(args.seconds * 50)
    batch = [torch.randn(frames, len(vocab)).mul(4).log_softmax(-1) for _ in range(args.utterances)]
    options = BeamOptions(beam=args.beam)
    start = time.perf_counter()
    serial = KenLMLexiconDecoder(vocab, lexicon, lm, options)
    build_s = time.perf_counter() - start
    print(f"lexicon {len(words)} words, bigram LM, {args.utterances} utterances of {args.seconds:g} s, beam {args.beam}; "
          f"building one decoder: {build_s:.1f} s\n")
    print("| workers | decoding (s) | utterances per s | speed-up | identical to serial |")
    print("|---|---|---|---|---|")
    reference, base = None, None
    for workers in args.workers:
        if workers == 1:
            start = time.perf_counter()
            found = serial.hypotheses(batch)
            took = time.perf_counter() - start
        else:
            with ParallelDecoder(workers, "kenlm", vocab, lexicon, lm, options) as parallel:
                parallel.hypotheses(batch[:workers])  # every worker built and warm before the clock starts
                start = time.perf_counter()
                found = parallel.hypotheses(batch)
                took = time.perf_counter() - start
        reference = reference if reference is not None else found
        base = base or took
        print(f"| {workers} | {took:.2f} | {len(batch) / took:.1f} | {base / took:.2f}x | {found == reference} |")

    # sew tune-lm's grid: every pair's beam search over the same emissions (the references: any words)
    utterances = [Utterance(f"u{i}", [], words[i % len(words)].split(), args.seconds, emissions=e)
                  for i, e in enumerate(batch)]
    pairs = len(args.lm_weights) * len(args.word_scores)
    print(f"\n| workers | grid of {pairs} pairs (s) | speed-up | identical to serial |")
    print("|---|---|---|---|")
    reference, base = None, None
    for workers in args.workers:
        with contextlib.ExitStack() as stack:
            parallel = None
            if workers > 1:
                parallel = stack.enter_context(ParallelDecoder(workers, "kenlm", vocab, lexicon, lm, options))
                parallel.hypotheses(batch[:workers])  # every worker built and warm before the clock starts
            start = time.perf_counter()
            points = decode_grid(utterances, serial, args.lm_weights, args.word_scores, log=lambda _: None,
                                 parallel=parallel)
            took = time.perf_counter() - start
        reference = reference if reference is not None else points
        base = base or took
        print(f"| {workers} | {took:.2f} | {base / took:.2f}x | {points == reference} |")


if __name__ == "__main__":
    main()
