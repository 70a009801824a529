"""What SEW-D's compiled position-bias kernel gains (``sew_plugin.modules.position_bias``): the
whole fp32 forward of a full-size SEW-D (random weights) and the c2p + p2c bias of one layer for
one utterance, each timed with the kernel and with PyTorch's gathers, interleaved after a warm-up;
the two forwards must agree bit for bit.

    .venv/bin/python examples/benchmarks/position_bias.py --seconds 10 30 --batch-size 1 8 --repeat 5
"""

import argparse
import statistics
import sys
import time

import torch

from sew_plugin.inference.bench import build
from sew_plugin.modules import position_bias
from sew_plugin.modules.disentangled_attention import RelativePositions


def interleaved(settings: dict, repeat: int) -> dict:
    """Median seconds of each named callable, run in alternating order after one warm-up each."""
    times = {name: [] for name in settings}
    for fn in settings.values():
        fn()
    for r in range(repeat):
        for name in (list(settings) if r % 2 == 0 else list(settings)[::-1]):
            start = time.perf_counter()
            settings[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sew_d_mid")
    p.add_argument("--seconds", nargs="+", type=float, default=[10, 30])
    p.add_argument("--batch-size", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model, forward = build(args.model)
    encoder = model.encoder.encoder
    heads = encoder.layer[0].attention.self.heads
    print(f"{args.model}, fp32, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"kernel: {position_bias.status()}")
    bias_rows, forward_rows = [], []
    for seconds in args.seconds:
        for bsz in args.batch_size:
            x = torch.randn(bsz, int(16000 * seconds))
            attended = []  # the squeezed length the attention sees
            hook = encoder.layer[0].attention.self.register_forward_pre_hook(lambda m, a: attended.append(a[0].size(1)))
            with position_bias.gathers():
                reference = forward(x)
            hook.remove()
            if not torch.equal(forward(x), reference):
                raise SystemExit("the kernel's forward differs from the gathers' forward")

            def gathered_forward():
                with position_bias.gathers():
                    forward(x)

            whole = interleaved({"gathers": gathered_forward, "kernel": lambda: forward(x)}, args.repeat)
            forward_rows.append(f"| {seconds:g} s | {bsz} | {1e3 * whole['gathers']:.0f} ms | {1e3 * whole['kernel']:.0f} ms "
                                f"| {whole['gathers'] / whole['kernel']:.2f}x |")
            print(forward_rows[-1], file=sys.stderr, flush=True)  # progress
        # the bias of one layer for one utterance (from 10 s up the attention's cache-sized groups hold one)
        length = attended[0]
        positions = RelativePositions(length, encoder.position_buckets, encoder.max_position, torch.device("cpu"))
        c2p, p2c = (torch.randn(1, heads, length, positions.rows) for _ in range(2))
        index = positions.c2p.expand(1, heads, -1), positions.p2c.expand(1, heads, -1)
        bias = interleaved({"gathers": lambda: c2p.flatten(-2).gather(-1, index[0]).add_(p2c.flatten(-2).gather(-1, index[1])),
                            "kernel": lambda: position_bias.position_bias(c2p, p2c, positions.rows_of, None)},
                           args.repeat)
        bias_rows.append(f"| {seconds:g} s | {length} | {1e3 * bias['gathers']:.2f} ms | {1e3 * bias['kernel']:.2f} ms "
                         f"| {bias['gathers'] / bias['kernel']:.2f}x |")
    print("\nThe whole forward:\n\n| audio | batch | gathers | kernel | speed-up |\n|---|---|---|---|---|")
    print("\n".join(forward_rows))
    print(f"\nThe bias of one layer ({heads} heads), one utterance:\n\n"
          "| audio | frames attended | gathers | kernel | speed-up |\n|---|---|---|---|---|")
    print("\n".join(bias_rows))

if __name__ == "__main__":
    main()
