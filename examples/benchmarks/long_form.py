"""Long recordings through ``Transcriber``: peak resident memory and real-time factor of one long
recording (30 min by default) against 20 s clips of the same audio, measured side by side.

    python examples/benchmarks/long_form.py --model sew_d_mid --minutes 30 --threads 2

Each case runs in a fresh Python process (its own peak resident memory, read from the kernel at its
end); the model is the preset with random weights in a CTC wrapper (the compute and memory of a
fine-tuned one), decoded greedily. The audio is speech-like (voiced tones with noise), written as a
16 kHz WAV and read as ``sew transcribe`` reads it.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np


def ctc_model(preset: str):
    """The preset's encoder (random weights) under ``sew_ctc``, with a 32-symbol letter dictionary."""
    from fairseq.data import Dictionary
    from omegaconf import OmegaConf, open_dict

    import sew_plugin.models  # noqa: F401
    from sew_plugin import presets
    from sew_plugin.models.sew_ctc import SEWCtc, SEWCtcConfig

    encoder = presets.model_config(preset)
    with open_dict(encoder):
        encoder._name = presets.load_config(preset).model._name
    w2v_args = OmegaConf.create({"model": encoder, "task": {"_name": "audio_pretraining", "data": ".", "normalize": False}})
    cfg = SEWCtcConfig(w2v_args=w2v_args, w2v_path="unused.pt", data=".", normalize=False, apply_mask=False,
                       layerdrop=0.0, final_dropout=0.0, dropout=0.0, activation_dropout=0.0, attention_dropout=0.0)
    vocab = Dictionary()
    for c in "|ETAONISRHDLUCMFWYGPBVKXJQZ'":
        vocab.add_symbol(c)
    return SEWCtc.build_model(OmegaConf.structured(cfg), Namespace(target_dictionary=vocab)).eval(), vocab


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.3 * t)
    return (0.3 * np.sin(2 * np.pi * np.cumsum(f0) / 16000) + 0.03 * rng.standard_normal(t.size)).astype(np.float32)


def run_case(args) -> dict:
    """One case in this process: every file of ``args.files`` transcribed; time and peak memory."""
    import torch

    from sew_plugin.inference.decoding import ViterbiDecoder
    from sew_plugin.inference.transcriber import Transcriber
    from sew_plugin.inference.windows import Windowing
    from sew_plugin.modules.masked_group_norm import mask_feature_norm

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, vocab = ctc_model(args.model)
    mask_feature_norm(model)
    transcriber = Transcriber(model, ViterbiDecoder(vocab), windowing=Windowing(args.window, args.context, args.batch_size))
    transcriber.transcribe(speechlike(2.0), sample_rate=16000)  # warm-up: first-call costs are not the audio's
    audio = elapsed = 0.0
    windows = 0
    for path in args.files:
        start = time.perf_counter()
        transcript = transcriber.transcribe(path)
        elapsed += time.perf_counter() - start
        audio += transcript.seconds
        windows += transcript.windows
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"files": len(args.files), "audio_s": audio, "seconds": elapsed, "rtf": elapsed / audio,
            "windows": windows, "peak_rss_mb": peak_mb}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="sew_d_mid")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clips", type=int, default=30, help="20 s clips cut from the start of the long recording")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--context", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=Path("long_form_bench"))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--files", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args)))
        return

    import soundfile as sf

    args.workdir.mkdir(parents=True, exist_ok=True)
    long = args.workdir / "long.wav"
    wav = speechlike(60 * args.minutes)
    sf.write(long, wav, 16000)
    clips = []
    for i in range(args.clips):
        clips.append(args.workdir / f"clip{i}.wav")
        sf.write(clips[-1], wav[i * 320000 : (i + 1) * 320000], 16000)
    del wav
    common = [sys.executable, __file__, "--model", args.model, "--threads", str(args.threads), "--window",
              str(args.window), "--context", str(args.context), "--batch-size", str(args.batch_size)]
    results = {}
    for name, files in (("20 s clips", clips), (f"{args.minutes:g} min recording", [long])):
        out = subprocess.run([*common, "--case", name, "--files", *map(str, files)], capture_output=True, text=True,
                             check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.model}, random weights, {args.threads} threads, window {args.window:g} s, context "
          f"{args.context:g} s, {args.batch_size} windows per forward, greedy decoding\n")
    print("| input | files | audio (s) | windows | time (s) | real-time factor | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['files']} | {r['audio_s']:.0f} | {r['windows']} | {r['seconds']:.1f} | {r['rtf']:.4f} | "
              f"{r['peak_rss_mb']:.0f} |")
    clip, whole = results["20 s clips"], results[f"{args.minutes:g} min recording"]
    print(f"\nlong / clips real-time factor: {whole['rtf'] / clip['rtf']:.2f}x; peak RSS of the long recording: "
          f"{whole['peak_rss_mb'] / 1024:.2f} GB")


if __name__ == "__main__":
    main()
