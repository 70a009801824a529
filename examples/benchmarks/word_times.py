"""Word times of a trained model against the truth: words spoken one by one with espeak-ng, trimmed
to their voiced samples and joined by known silences, transcribed by ``Transcriber``; for each word
recognised in place, how far its start and end lie from where it was put, in model frames.

    python examples/benchmarks/word_times.py demo_out/w2v2/finetune/checkpoint_best.pt --data demo_out/data

The words are drawn from ``--data``/lexicon.txt (the demo's vocabulary); the decoder is KenLM with
that folder's lexicon and lm.arpa. A word's true span is its synthesised audio above 2% of its peak.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "demo"))
from corpus import synthesise  # noqa: E402  (the demo's espeak-ng call, resampled to 16 kHz)


def voiced(wav: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(wav) > 0.02 * np.abs(wav).max())
    return wav[loud[0] : loud[-1] + 1]


def main():
    from sew_plugin.inference.decoding import BeamOptions
    from sew_plugin.inference.transcriber import Transcriber

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="folder with dict.ltr.txt, lexicon.txt, lm.arpa")
    parser.add_argument("--words", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    vocabulary = [line.split()[0] for line in (args.data / "lexicon.txt").read_text().splitlines()]
    chosen = [str(w) for w in rng.choice([w for w in vocabulary if len(w) > 2], args.words)]
    pieces, truth, at = [np.zeros(8000, np.float32)], [], 0.5
    for word in chosen:
        wav = voiced(synthesise(word.lower(), "en+m3", 160, 50))
        truth.append((word, at, at + len(wav) / 16000))
        gap = rng.uniform(0.3, 0.9)
        pieces += [wav, np.zeros(int(gap * 16000), np.float32)]
        at += len(wav) / 16000 + int(gap * 16000) / 16000
    audio = np.concatenate(pieces)

    transcriber = Transcriber.from_checkpoint(args.checkpoint, data=args.data, decoder="kenlm",
                                              lm=args.data / "lm.arpa", lexicon=args.data / "lexicon.txt",
                                              beam=BeamOptions())
    transcript = transcriber.transcribe(audio, sample_rate=16000)
    frame = transcript.frame_period_ms / 1000
    starts, ends, matched = [], [], 0
    for word in transcript.words:  # the true word whose span holds the recognised word's middle
        middle = (word.start + word.end) / 2
        found = [t for t in truth if t[1] - 0.1 <= middle <= t[2] + 0.1]
        if found and found[0][0] == word.word:
            matched += 1
            starts.append(abs(word.start - found[0][1]) / frame)
            ends.append(abs(word.end - found[0][2]) / frame)
    starts, ends = np.array(starts), np.array(ends)
    print(f"{len(chosen)} words spoken ({len(audio) / 16000:.1f} s), {len(transcript.words)} recognised, "
          f"{matched} of them the word in place; frame period {transcript.frame_period_ms:g} ms")
    if matched:
        print("| boundary | median error (frames) | 90th percentile | within 2 frames |")
        print("|---|---|---|---|")
        for name, errors in (("start", starts), ("end", ends)):
            print(f"| {name} | {np.median(errors):.1f} | {np.percentile(errors, 90):.1f} | "
                  f"{100 * np.mean(errors <= 2):.0f}% |")


if __name__ == "__main__":
    main()
