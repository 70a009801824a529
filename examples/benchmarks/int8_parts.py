"""What each part of ``--dtype int8`` gains in SEW-D-mid's whole forward (issue 22): fp32; int8 as
``set_precision`` makes it; int8 with the feature extractor left in fp32 (the linear layers only,
``quantize_linear_layers``: int8 until 2026-12-06); int8 with ``torch._int_mm``'s products instead of
oneDNN's with packed weights (``modules.int8_linear.onednn_int8``). Random weights, the rows
interleaved in rotations, each speed-up the median over rotations of fp32's time over the row's in
the same rotation (``bench.paired``; its spread in brackets); also each int8 row's largest
difference from fp32's encoder output, relative to fp32's largest value.

    .venv/bin/python examples/benchmarks/int8_parts.py --seconds 10 30 --batch-size 1 8 --repeat 5
"""

import argparse
import statistics
import time

import torch

from sew_plugin.inference.bench import build, paired
from sew_plugin.inference.precision import context_network, quantize_linear_layers, set_precision
from sew_plugin.modules import int8_linear


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", nargs="+", type=float, default=[10, 30])
    p.add_argument("--batch-size", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    (fp32, fp32_forward), (int8, int8_forward), (linear_only, linear_forward) = (build("sew_d_mid") for _ in range(3))
    set_precision(int8, "int8")  # build seeds its random weights: the three models are one
    quantize_linear_layers(context_network(linear_only))
    onednn = int8_linear.onednn_int8
    rows = {"fp32": (fp32_forward, onednn), "int8": (int8_forward, onednn),
            "int8, extractor fp32": (linear_forward, onednn), "int8, torch._int_mm": (int8_forward, lambda: False)}
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}; int8 quantization: {int8_linear.status()}; "
          f"oneDNN's packed int8 products: {'yes' if onednn() else 'no (torch._int_mm in every int8 row)'}\n")
    print("| audio (s) | batch | row | median (ms) | speed-up vs fp32 | max difference from fp32 |")
    print("|---|---|---|---|---|---|")
    for seconds in args.seconds:
        for batch in args.batch_size:
            x = torch.randn(batch, int(16000 * seconds))
            outputs, times = {}, {name: [] for name in rows}
            for r in range(args.repeat + 1):  # the first rotation warms up
                names = list(rows)[r % len(rows):] + list(rows)[: r % len(rows)]
                for name in names:
                    forward, packed = rows[name]
                    int8_linear.onednn_int8 = packed
                    start = time.perf_counter()
                    outputs[name] = forward(x)
                    times[name].append(time.perf_counter() - start)
            int8_linear.onednn_int8 = onednn
            scale = outputs["fp32"].abs().max()
            for name, t in times.items():
                ratios = paired(times["fp32"][1:], t[1:])
                diff = (outputs[name] - outputs["fp32"]).abs().max() / scale
                print(f"| {seconds:g} | {batch} | {name} | {1e3 * statistics.median(t[1:]):.0f} | "
                      f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | {diff:.4f} |",
                      flush=True)


if __name__ == "__main__":
    main()
