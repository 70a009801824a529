"""How much faster one SEW-D-mid layer's linear products run in bf16 and in int8 (``Int8Linear``)
than in fp32, at the row counts of ``sew bench``'s settings: what bounds the whole forward's gain
in each format (issue 22). ``bf16`` is what a bf16 model runs on the CPU, weights packed in
oneDNN's layout (``modules.onednn.PackedLinear``), ``bf16 plain`` PyTorch's ``nn.Linear`` (the same
results); ``int8`` multiplies by oneDNN's product with its weight packed where the CPU has VNNI
(``int8_linear.onednn_int8``), ``int8 _int_mm`` by ``torch._int_mm`` (the same results); ``int8 ops`` is
``Int8Linear`` quantizing with PyTorch's operations instead of its compiled kernel
(``modules/int8_rows.c``; the same results). Interleaved, median of ``--repeat``; random weights.

    .venv/bin/python examples/benchmarks/linear_formats.py --rows 249 749 1992 5992 --repeat 12
"""

import argparse
import statistics
import time

import torch
from torch import nn

from sew_plugin.modules import int8_linear, onednn
from sew_plugin.modules.int8_linear import Int8Linear

# (in, out) of one layer's products: query, key, value and output projections, then the feed-forward pair
LAYER = [(512, 512)] * 4 + [(512, 2048), (2048, 512)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", type=int, default=[249, 749, 1992, 5992],
                   help="frames in the batch: 249 is 10 s, 749 is 30 s (batch 1); 1992 and 5992 batch 8")
    p.add_argument("--repeat", type=int, default=12)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    layers = [nn.Linear(i, o) for i, o in LAYER]
    int8 = [Int8Linear.from_linear(layer) for layer in layers]
    plain = [nn.Linear(i, o).to(torch.bfloat16) for i, o in LAYER]
    formats = {"fp32": layers, "bf16": [onednn.PackedLinear(layer) for layer in plain], "bf16 plain": plain,
               "int8": int8, "int8 _int_mm": int8, "int8 ops": int8}
    dtypes = {name: torch.bfloat16 if name.startswith("bf16") else torch.float32 for name in formats}
    kernel, packed = int8_linear.library, int8_linear.onednn_int8
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}; int8 quantization: {int8_linear.status()}\n")
    print(f"bf16 weights packed in oneDNN's layout: {'yes' if onednn.available() else 'no (oneDNN has no bf16 here)'}\n")
    print(f"int8 weights packed in oneDNN's layout: {'yes' if packed() else 'no (torch._int_mm)'}\n")
    print("| rows | fp32 (ms) | bf16 (ms) | bf16 plain (ms) | int8 (ms) | int8 _int_mm (ms) | int8 ops (ms) "
          "| bf16 vs fp32 | int8 vs fp32 | bf16 packed vs plain | int8 packed vs _int_mm | int8 kernel vs ops "
          "| fp32 GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    flops_per_row = 2 * sum(i * o for i, o in LAYER)
    for rows in args.rows:
        inputs = {name: {i: torch.randn(rows, i).to(dtypes[name]) for i in {512, 2048}} for name in formats}
        times = {name: [] for name in formats}
        for _ in range(args.repeat + 1):  # the first round warms up
            for name, modules in formats.items():
                int8_linear.library = (lambda: None) if name == "int8 ops" else kernel
                int8_linear.onednn_int8 = (lambda: False) if name == "int8 _int_mm" else packed
                start = time.perf_counter()
                for module, (i, _) in zip(modules, LAYER):
                    module(inputs[name][i])
                times[name].append(time.perf_counter() - start)
        ms = {name: 1e3 * statistics.median(t[1:]) for name, t in times.items()}
        print(f"| {rows} | {ms['fp32']:.2f} | {ms['bf16']:.2f} | {ms['bf16 plain']:.2f} | {ms['int8']:.2f} "
              f"| {ms['int8 _int_mm']:.2f} | {ms['int8 ops']:.2f} | {ms['fp32'] / ms['bf16']:.2f}x "
              f"| {ms['fp32'] / ms['int8']:.2f}x | {ms['bf16 plain'] / ms['bf16']:.2f}x "
              f"| {ms['int8 _int_mm'] / ms['int8']:.2f}x | {ms['int8 ops'] / ms['int8']:.2f}x "
              f"| {flops_per_row * rows / ms['fp32'] / 1e6:.0f} |", flush=True)
    int8_linear.library, int8_linear.onednn_int8 = kernel, packed


if __name__ == "__main__":
    main()
