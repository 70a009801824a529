"""WER and forward time of trained models in each number format, side by side in one process: the
demo's fine-tuned SEW-D and wav2vec 2.0 on its held-out test set, greedy decoding, fp32 vs bf16 vs
int8 (``--dtype``), in interleaved order so machine drift hits every format alike.

    python examples/benchmarks/precision.py demo_out/sew_d/finetune/checkpoint_best.pt \
        demo_out/w2v2/finetune/checkpoint_best.pt --manifest demo_out/data/test.tsv

Prints, per model and format, the WER, the forward's milliseconds per second of audio (median of
``--repeat`` passes over the test set) and its speed-up over fp32, and how many hypotheses differ
from fp32's.
"""

import argparse
import statistics
from pathlib import Path


def main():
    import torch

    from sew_plugin.inference.decoding import ViterbiDecoder
    from sew_plugin.inference.settings import load_for_inference
    from sew_plugin.inference.transcribe import Batching, transcribe

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--manifest", type=Path, required=True, help="test.tsv, with its .ltr beside it")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "int8"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.manifest}")
    print("| model | dtype | WER greedy | forward ms per s of audio | speed-up vs fp32 | hypotheses unlike fp32's |")
    print("|---|---|---|---|---|---|")
    for checkpoint in args.checkpoints:
        loaded = {d: load_for_inference(checkpoint, args.manifest.parent, dtype=d) for d in args.dtypes}
        decoder = ViterbiDecoder(loaded[args.dtypes[0]][1].target_dictionary)
        times = {d: [] for d in args.dtypes}
        results = {}
        for r in range(args.repeat):
            for d in args.dtypes[r % len(args.dtypes):] + args.dtypes[: r % len(args.dtypes)]:
                model, _, normalize = loaded[d]
                utterances, summary = transcribe(model, args.manifest, decoder, normalize=normalize,
                                                 batching=Batching(batch_size=args.batch_size))
                times[d].append(1000 * summary.rtf_forward)
                results[d] = (summary.wer, [u.hyp for u in utterances])
        base = statistics.median(times["fp32"]) if "fp32" in times else None
        for d in args.dtypes:
            wer, hyps = results[d]
            ms = statistics.median(times[d])
            differ = sum(a != b for a, b in zip(hyps, results["fp32"][1])) if "fp32" in results else "-"
            speedup = f"{base / ms:.2f}x" if base else "-"
            print(f"| {checkpoint} | {d} | {100 * wer:.2f}% | {ms:.2f} | {speedup} | {differ} of {len(hyps)} |")


if __name__ == "__main__":
    main()
