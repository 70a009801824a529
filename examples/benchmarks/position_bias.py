"""What SEW-D's compiled position-bias kernels gain (``sew_plugin.modules.position_bias``): the
whole forward of a full-size SEW-D (random weights) and the attention of one layer for one
utterance (its products, position bias, softmax and values), in fp32 (the bias kernel) and bf16
(the biased-softmax kernel), each timed with the kernel and with PyTorch's gathers, interleaved
after a warm-up. The fp32 forwards must agree bit for bit; in bf16 the kernel's forward must be as
close to the fp32 model's as the gathers' (root-mean-square difference within 1.25x).

    .venv/bin/python examples/benchmarks/position_bias.py --seconds 10 30 --batch-size 1 8 --repeat 5
"""

import argparse
import statistics
import sys
import time

import torch

from sew_plugin.inference.bench import build
from sew_plugin.inference.precision import DTYPES, set_precision
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


def as_close(kernel: torch.Tensor, gathered: torch.Tensor, fp32: torch.Tensor) -> bool:
    """Whether ``kernel`` is as close to ``fp32`` as ``gathered`` is (RMS difference within 1.25x);
    bit for bit when they are fp32."""
    if kernel.dtype == torch.float32:
        return torch.equal(kernel, gathered)
    return bool((kernel.float() - fp32).pow(2).mean() <= 1.25**2 * (gathered.float() - fp32).pow(2).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sew_d_mid")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--seconds", nargs="+", type=float, default=[10, 30])
    p.add_argument("--batch-size", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    print(f"{args.model}, {torch.get_num_threads()} threads, torch {torch.__version__}; kernel: {position_bias.status()}")
    layer_rows, forward_rows = [], []
    fp32_forward = build(args.model)[1]  # the reference of the bf16 forwards (same seeded weights)
    for dtype in args.dtypes:
        model, forward = build(args.model)
        set_precision(model.eval(), dtype)
        encoder = model.encoder.encoder
        attention = encoder.layer[0].attention.self
        for seconds in args.seconds:
            for bsz in args.batch_size:
                x = torch.randn(bsz, int(16000 * seconds))
                attended = []  # the squeezed length the attention sees
                hook = attention.register_forward_pre_hook(lambda m, a: attended.append(a[0].size(1)))
                with position_bias.gathers():
                    reference = forward(x)
                hook.remove()
                if not as_close(forward(x), reference, fp32_forward(x) if dtype != "fp32" else reference):
                    raise SystemExit(f"{dtype}: the kernel's forward is further from fp32's than the gathers'")

                def gathered_forward():
                    with position_bias.gathers():
                        forward(x)

                whole = interleaved({"gathers": gathered_forward, "kernel": lambda: forward(x)}, args.repeat)
                forward_rows.append(f"| {dtype} | {seconds:g} s | {bsz} | {1e3 * whole['gathers']:.0f} ms "
                                    f"| {1e3 * whole['kernel']:.0f} ms | {whole['gathers'] / whole['kernel']:.2f}x |")
                print(forward_rows[-1], file=sys.stderr, flush=True)  # progress
            # one layer's attention for one utterance (from 10 s up the attention's cache-sized groups hold one)
            length = attended[0]
            positions = RelativePositions(length, encoder.position_buckets, encoder.max_position, torch.device("cpu"))
            table = torch.randn(2 * encoder.position_buckets, model.cfg.encoder_embed_dim, dtype=DTYPES[dtype])
            pos_key, pos_query = attention.position_tables(table, ("benchmark",),
                                                           slice(positions.first, positions.first + positions.rows))
            q, k, v = (torch.randn(1, attention.heads, length, attention.head_dim, dtype=DTYPES[dtype]) for _ in range(3))

            def attend():
                return attention._attend(q, k, v, pos_key, pos_query, positions, None)

            def gathered_attend():
                with position_bias.gathers():
                    return attend()

            one = interleaved({"gathers": gathered_attend, "kernel": attend}, args.repeat)
            layer_rows.append(f"| {dtype} | {seconds:g} s | {length} | {1e3 * one['gathers']:.2f} ms "
                              f"| {1e3 * one['kernel']:.2f} ms | {one['gathers'] / one['kernel']:.2f}x |")
    print("\nThe whole forward:\n\n| format | audio | batch | gathers | kernel | speed-up |\n|---|---|---|---|---|---|")
    print("\n".join(forward_rows))
    print(f"\nThe attention of one layer ({attention.heads} heads), one utterance:\n\n"
          "| format | audio | frames attended | gathers | kernel | speed-up |\n|---|---|---|---|---|---|")
    print("\n".join(layer_rows))


if __name__ == "__main__":
    main()
