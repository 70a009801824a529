"""How much faster wav2vec 2.0 base runs with its feature extractor run the plugin's way
(``feature_extractor.group_feature_extractors``, what ``load_checkpoint`` does for every checkpoint)
than with fairseq's own, in fp32 and bf16: the same weights, random, the whole forward timed
interleaved in one process (median of ``--repeat``; the speed-up is the median of each round's
ratio, ``bench.paired``), with the largest difference between the two models' outputs.

    .venv/bin/python examples/benchmarks/wav2vec2_front_end.py --seconds 10 --batch-size 1 8 --repeat 6
"""

import argparse
import statistics
import time

import torch

from sew_plugin.inference.bench import build, paired
from sew_plugin.inference.precision import set_precision
from sew_plugin.modules.feature_extractor import group_feature_extractors


def timed(forward, x) -> float:
    start = time.perf_counter()
    forward(x)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch-size", nargs="+", type=int, default=[1, 8])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--repeat", type=int, default=6)
    args = p.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.seconds:g} s of audio")
    print("| dtype | batch | fairseq's extractor (ms) | the plugin's (ms) | speed-up | max difference |")
    print("|---|---|---|---|---|---|")
    for dtype in args.dtypes:
        fairseq, fairseq_forward = build("w2v2_base")
        grouped, grouped_forward = build("w2v2_base")
        grouped.load_state_dict(fairseq.state_dict())
        group_feature_extractors(grouped)
        for model in (fairseq, grouped):
            set_precision(model, dtype)
        forwards = {"fairseq": fairseq_forward, "grouped": grouped_forward}
        for batch in args.batch_size:
            x = torch.randn(batch, int(16000 * args.seconds))
            times = {name: [] for name in forwards}
            with torch.no_grad():
                outputs = {name: forward(x).float() for name, forward in forwards.items()}  # and warm-up
                for r in range(args.repeat):
                    for name in (list(forwards) if r % 2 else list(forwards)[::-1]):
                        times[name].append(timed(forwards[name], x))
            ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
            speedup = statistics.median(paired(times["fairseq"], times["grouped"]))
            diff = (outputs["fairseq"] - outputs["grouped"]).abs().max().item()
            print(f"| {dtype} | {batch} | {ms['fairseq']:.0f} | {ms['grouped']:.0f} | {speedup:.2f}x | {diff:.3g} |")


if __name__ == "__main__":
    main()
