"""What the masked GroupNorm front end costs: forward time of a padded batch with each utterance
normalised over its own frames (``sew_plugin.modules.masked_group_norm``, what inference uses) beside
fairseq's statistics over the padded batch, for full-size models with the GroupNorm front end
(random weights). Timings interleave the two settings, after a warm-up each.

    .venv/bin/python examples/benchmarks/masked_group_norm.py --models w2v2_base sew_d_mid --repeat 5
"""

import argparse
import statistics
import time

import torch

from sew_plugin import presets
from sew_plugin.interop.onnx import waveform_batch
from sew_plugin.modules import keep_layer_results
from sew_plugin.modules.masked_group_norm import mask_feature_norm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["w2v2_base", "sew_d_mid"])
    p.add_argument("--seconds", nargs="+", type=float, default=[15, 12, 9, 7, 5, 4, 3, 2])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    source, padding = waveform_batch(args.seconds)
    print(f"{torch.get_num_threads()} threads, batch of {len(args.seconds)} padded to {max(args.seconds):g} s")
    for name in args.models:
        model = presets.build_model(name, extractor_mode="default")
        model.remove_pretraining_modules()
        keep_layer_results(model, False)
        model.eval()
        times = {"fairseq": [], "masked": []}
        with torch.no_grad():
            for setting in ("fairseq", "masked"):  # warm-up
                mask_feature_norm(model, setting == "masked")
                model(source, padding_mask=padding, mask=False, features_only=True)
            for r in range(args.repeat):
                for setting in (("fairseq", "masked") if r % 2 == 0 else ("masked", "fairseq")):
                    mask_feature_norm(model, setting == "masked")
                    start = time.perf_counter()
                    model(source, padding_mask=padding, mask=False, features_only=True)
                    times[setting].append(time.perf_counter() - start)
        base, masked = statistics.median(times["fairseq"]), statistics.median(times["masked"])
        print(f"{name}: fairseq's statistics {1000 * base:.0f} ms, masked {1000 * masked:.0f} ms "
              f"(median of {args.repeat}): {100 * (masked / base - 1):+.1f}%")


if __name__ == "__main__":
    main()
