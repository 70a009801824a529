"""SEW-D-mid's whole bf16 forward with its query, key and value projections as three products or
as one (``modules.onednn.StackedLinear``, used where the stacked output fits
``StackedLinear.MAX_BYTES``): the model of ``sew bench --models sew_d_mid:bf16``, random weights,
paired in alternating order, median of ``--repeat`` pairs with their spread (issue 22). The
largest difference of the two outputs is printed (zero: the same products).

    .venv/bin/python examples/benchmarks/stacked_projections.py --seconds 10 20 30 --batch-size 1 8

Timed op by op (one layer's projections, alternating call by call) the stacked form measured
slower at 749 rows and more, and faster in blocks of calls: the caches then hold one form's
weights. The whole forward, where every layer's weights come from beyond the L2 cache, decides.
"""

import argparse
import itertools
import statistics
import time

import torch

from sew_plugin.inference.bench import prepare
from sew_plugin.modules import onednn
from sew_plugin.modules.disentangled_attention import DisentangledSelfAttention


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", nargs="+", type=float, default=[10, 20, 30])
    p.add_argument("--batch-size", nargs="+", type=int, default=[1])
    p.add_argument("--repeat", type=int, default=12)
    args = p.parse_args()
    if not onednn.available():
        raise SystemExit("oneDNN computes no bf16 on this CPU: the projections run as PyTorch's products")
    row = prepare("sew_d_mid:bf16", "fp32", "cpu")
    bound = onednn.StackedLinear.MAX_BYTES
    attention = next(m for m in row.model.modules() if isinstance(m, DisentangledSelfAttention))
    seen = {}  # the rows the projections take: frames of the batch after the squeeze
    attention.register_forward_pre_hook(lambda module, args: seen.update(rows=args[0].shape[0] * args[0].shape[1]))
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}; stacked up to {bound >> 20} MiB of output\n")
    print("| audio (s) | batch | rows | stacked | three products (ms) | as one (ms) | speed-up (spread) "
          "| largest difference |")
    print("|---|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for seconds, batch in itertools.product(args.seconds, args.batch_size):
            x = torch.randn(batch, int(16000 * seconds))
            times, outputs = {0: [], bound: []}, {}
            for r in range(args.repeat + 1):  # the first pair warms up
                for limit in (0, bound) if r % 2 else (bound, 0):
                    onednn.StackedLinear.MAX_BYTES = limit
                    start = time.perf_counter()
                    outputs[limit] = row.forward(x)
                    times[limit].append(time.perf_counter() - start)
            onednn.StackedLinear.MAX_BYTES = bound
            ratios = sorted(a / b for a, b in zip(times[0][1:], times[bound][1:]))
            rows = seen["rows"]
            fits = "yes" if rows * 3 * attention.query_proj.in_features * 2 <= bound else "no"
            difference = (outputs[0].float() - outputs[bound].float()).abs().max().item()
            print(f"| {seconds:g} | {batch} | {rows} | {fits} | {1e3 * statistics.median(times[0][1:]):.1f} "
                  f"| {1e3 * statistics.median(times[bound][1:]):.1f} | {statistics.median(ratios):.3f}x "
                  f"({ratios[0]:.2f}-{ratios[-1]:.2f}) | {difference:g} |", flush=True)


if __name__ == "__main__":
    main()
