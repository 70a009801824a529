"""Each CPU's own matrix-product rate, fp32 / bf16 / int8, and the rate of all of them together:
whether the CPUs a run uses are alike (issue 22).

Why: on a shared virtual machine a vCPU's AMX (bf16, int8) throughput depends on what else runs
on the physical core behind it, and the two vCPUs of the 2-core Xeon in README differed by up to
3.0x in bf16 in the same round. oneDNN splits a product evenly between threads, so a product on
all CPUs runs at the pace of the slowest one, and a bf16 forward's speed-up over fp32 follows that
CPU's AMX rate rather than the machine's best.

Each round times, for every CPU in turn, one thread with the process pinned to it
(``os.sched_setaffinity``), then the process on all CPUs with as many threads (where the threads
run is left to the system); each a ``GemmReference`` slot (2048^3 products, ``--peak``'s: int8
is an ``Int8Linear`` layer). Linux only.

    .venv/bin/python examples/benchmarks/cpu_rates.py --rounds 5
"""

import argparse
import os
import statistics

import torch

from sew_plugin.inference.bench import GemmReference

FORMATS = ("fp32", "bf16", "int8")


def rate(reference: GemmReference) -> float:
    """GFLOP/s of one slot of ``reference``."""
    return reference.flop / reference.seconds() / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    args = p.parse_args()
    if not hasattr(os, "sched_setaffinity"):
        raise SystemExit("cpu_rates.py pins threads with os.sched_setaffinity, which this system lacks (Linux has it)")
    cpus = sorted(os.sched_getaffinity(0))
    torch.set_grad_enabled(False)
    references = {f: GemmReference(f) for f in args.formats}
    places = [f"cpu {c}" for c in cpus] + [f"all {len(cpus)}"]
    rates = {(place, f): [] for place in places for f in args.formats}
    for reference in references.values():
        reference.warm_up()
    for _ in range(args.rounds):
        for place, pinned in zip(places, [{c} for c in cpus] + [set(cpus)]):
            os.sched_setaffinity(0, pinned)
            torch.set_num_threads(len(pinned))
            for f, reference in references.items():
                rates[place, f].append(rate(reference))
    os.sched_setaffinity(0, set(cpus))

    print(f"GFLOP/s, median (min-max) over {args.rounds} rounds; {torch.__version__}, CPUs {cpus}")
    print("| where | " + " | ".join(args.formats) + " |")
    print("|---|" + "---|" * len(args.formats))
    for place in places:
        cells = [f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})"
                 for v in (rates[place, f] for f in args.formats)]
        print(f"| {place} | " + " | ".join(cells) + " |")
    for f in args.formats:
        per_round = [max(r) / min(r) for r in zip(*(rates[f"cpu {c}", f] for c in cpus))]
        print(f"{f}: fastest CPU over slowest, per round: " + " ".join(f"{x:.2f}" for x in per_round))
    if "fp32" in args.formats:
        for place in places:
            ratios = [" ".join(f"{h / s:.1f}" for h, s in zip(rates[place, f], rates[place, "fp32"]))
                      for f in args.formats if f != "fp32"]
            print(f"{place}: over its fp32, per round: " + " | ".join(
                f"{f} {r}" for f, r in zip([f for f in args.formats if f != "fp32"], ratios)))


if __name__ == "__main__":
    main()
