"""What two of ``modules.onednn``'s ways gain in SEW-D-mid's whole forward (issue 22), each timed on
and off in one process: the model of ``sew bench --models sew_d_mid`` (random weights), paired in
alternating order, median of ``--repeat`` pairs with their spread, and the largest difference of
the two outputs.

- ``stacked`` (bf16): the query, key and value projections as one product (``StackedLinear``,
  where the stacked output fits ``StackedLinear.MAX_BYTES``) or as three;
- ``fp32-packing`` (fp32): the transformer's linear layers on their packed weights
  (``PackedLinear``, ``packs``) or PyTorch's products.

    .venv/bin/python examples/benchmarks/onednn_changes.py stacked --seconds 10 20 30 --batch-size 1
    .venv/bin/python examples/benchmarks/onednn_changes.py fp32-packing --seconds 10 30 --batch-size 1 8

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

CHANGES = {"stacked": "sew_d_mid:bf16", "fp32-packing": "sew_d_mid"}
BOUND, PACKS = onednn.StackedLinear.MAX_BYTES, onednn.packs  # as the package sets them


def switch(change: str, on: bool) -> None:
    """Turn ``change`` on or off for the forwards that follow."""
    if change == "stacked":
        onednn.StackedLinear.MAX_BYTES = BOUND if on else 0
    else:
        onednn.packs = PACKS if on else (lambda x: x.dtype == torch.bfloat16 and PACKS(x))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("change", choices=list(CHANGES))
    p.add_argument("--seconds", nargs="+", type=float, default=[10, 20, 30])
    p.add_argument("--batch-size", nargs="+", type=int, default=[1])
    p.add_argument("--repeat", type=int, default=12)
    args = p.parse_args()
    if not onednn.available():
        raise SystemExit("oneDNN computes no bf16 on this CPU: neither change applies")
    row = prepare(CHANGES[args.change], "fp32", "cpu")
    attention = next(m for m in row.model.modules() if isinstance(m, DisentangledSelfAttention))
    seen = {}  # the rows the projections take: frames of the batch after the squeeze
    attention.register_forward_pre_hook(lambda module, inputs: seen.update(rows=inputs[0].shape[:2].numel()))
    print(f"{args.change} ({CHANGES[args.change]}): {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| audio (s) | batch | rows | off (ms) | on (ms) | speed-up (spread) | largest difference |")
    print("|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for seconds, batch in itertools.product(args.seconds, args.batch_size):
            x = torch.randn(batch, int(16000 * seconds))
            times, outputs = {False: [], True: []}, {}
            for r in range(args.repeat + 1):  # the first pair warms up
                for on in (False, True) if r % 2 else (True, False):
                    switch(args.change, on)
                    start = time.perf_counter()
                    outputs[on] = row.forward(x)
                    times[on].append(time.perf_counter() - start)
            switch(args.change, True)
            ratios = sorted(a / b for a, b in zip(times[False][1:], times[True][1:]))
            difference = (outputs[False].float() - outputs[True].float()).abs().max().item()
            print(f"| {seconds:g} | {batch} | {seen['rows']} | {1e3 * statistics.median(times[False][1:]):.1f} "
                  f"| {1e3 * statistics.median(times[True][1:]):.1f} | {statistics.median(ratios):.3f}x "
                  f"({ratios[0]:.2f}-{ratios[-1]:.2f}) | {difference:g} |", flush=True)


if __name__ == "__main__":
    main()
