"""A small English speech corpus synthesised with espeak-ng: no download needed.

Text: Python's own documentation (``pydoc_data.topics``) cut into 3-10 word pieces of plain words.
Only pieces whose every word occurs at least ``min_count`` times are kept, so the task has a closed
vocabulary of a few hundred words; validation and test sentences are held out from training but use
only words that training has, so a lexicon and an n-gram language model built from the training text
cover them. Each sentence is spoken once by a voice, speed and pitch drawn at random, and resampled
to 16 kHz mono.

Output (cached: files that exist are not synthesised again)::

    OUT/audio/{train,valid,test}/<split>-NNNNN.wav
    OUT/{train,valid,test}.txt   one "ID text" line per utterance (LibriSpeech style)
    OUT/corpus.json              the parameters; a rerun with other ones refuses to mix them
"""

import argparse
import collections
import hashlib
import io
import json
import random
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

VOICES = [f"{lang}+{v}" for lang in ("en", "en-us") for v in ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4")]
RATES = (130, 200)  # words per minute
PITCHES = (30, 70)
SAMPLE_RATE = 16000
_WORD = re.compile(r"^[A-Za-z]+[.,;:]?$")


def text_pieces(min_words=3, max_words=10):
    """Runs of plain words in the Python documentation, cut at punctuation, lower-cased, unique."""
    from pydoc_data.topics import topics

    pieces, run = [], []

    def close():
        if min_words <= len(run) <= max_words:
            pieces.append(" ".join(run))
        run.clear()

    for doc in (topics[k] for k in sorted(topics)):
        for token in doc.split() + ["|"]:
            if not _WORD.match(token):
                close()
                continue
            run.append(token.rstrip(".,;:").lower())
            if token[-1] in ".,;:":
                close()
    return sorted(set(pieces))


def split_sentences(n_valid, n_test, min_count=3, seed=0):
    """Closed-vocabulary train / valid / test sentences; held-out ones use training words only."""
    pieces = text_pieces()
    counts = collections.Counter(w for p in pieces for w in p.split())
    pieces = [p for p in pieces if all(counts[w] >= min_count for w in p.split())]
    counts = collections.Counter(w for p in pieces for w in p.split())
    random.Random(seed).shuffle(pieces)
    held_out, train = [], []
    for piece in pieces:
        words = piece.split()
        # hold a sentence out only if every word of it stays in the training text
        if len(held_out) < n_valid + n_test and all(counts[w] >= 2 for w in words):
            held_out.append(piece)
            counts.subtract(words)
        else:
            train.append(piece)
    if len(held_out) < n_valid + n_test:
        raise ValueError(f"only {len(held_out)} sentences can be held out, {n_valid + n_test} asked for")
    return {"train": train, "valid": held_out[:n_valid], "test": held_out[n_valid:]}


def synthesise(text, voice, rate, pitch):
    """espeak-ng's 22.05 kHz output resampled to 16 kHz float32."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", text],
        check=True, capture_output=True,
    ).stdout
    audio, rate_in = sf.read(io.BytesIO(wav), dtype="float32")
    if rate_in != 22050:
        raise RuntimeError(f"espeak-ng wrote {rate_in} Hz audio, expected 22050")
    return resample_poly(audio, 320, 441).astype(np.float32)  # 22050 * 320 / 441 = 16000


def _write(path: Path, text, voice, rate, pitch):
    if path.exists():
        return
    tmp = path.with_suffix(".tmp.wav")
    sf.write(tmp, synthesise(text, voice, rate, pitch), SAMPLE_RATE)
    tmp.rename(path)  # a killed run leaves no half-written WAV behind


def build_corpus(out: Path, n_valid=100, n_test=200, max_train=None, min_count=3, seed=0, jobs=2):
    """Synthesise (or reuse) the corpus in ``out``; return {split: number of utterances}."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: install it (Debian: apt-get install espeak-ng)")
    out = Path(out)
    splits = split_sentences(n_valid, n_test, min_count, seed)
    if max_train:
        splits["train"] = splits["train"][:max_train]
    # the sentences come from this interpreter's documentation: another Python version may give others,
    # whose text must not be paired with WAVs synthesised from these
    sentences = hashlib.sha1(json.dumps(splits, sort_keys=True).encode()).hexdigest()
    params = dict(n_valid=n_valid, n_test=n_test, max_train=max_train, min_count=min_count, seed=seed,
                  voices=VOICES, rates=list(RATES), pitches=list(PITCHES), sentences_sha1=sentences)
    spec = out / "corpus.json"
    if spec.exists() and json.loads(spec.read_text()) != params:
        raise SystemExit(f"{out} holds a corpus made with other parameters or sentences ({spec}); "
                         "use another directory")
    out.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps(params, indent=1))

    rng = random.Random(seed)
    jobs_list = []
    for split, sentences in splits.items():
        (out / "audio" / split).mkdir(parents=True, exist_ok=True)
        lines = []
        for i, text in enumerate(sentences):
            uid = f"{split}-{i:05d}"
            lines.append(f"{uid} {text}\n")
            voice, rate, pitch = rng.choice(VOICES), rng.randint(*RATES), rng.randint(*PITCHES)
            jobs_list.append((out / "audio" / split / f"{uid}.wav", text, voice, rate, pitch))
        (out / f"{split}.txt").write_text("".join(lines))
    todo = [j for j in jobs_list if not j[0].exists()]
    if todo:
        with ThreadPoolExecutor(jobs) as pool:
            list(tqdm(pool.map(lambda j: _write(*j), todo), total=len(todo), desc="synthesising", unit="utt"))
    return {split: len(s) for split, s in splits.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--valid", type=int, default=100)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--min-count", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    sizes = build_corpus(args.out, args.valid, args.test, args.max_train, args.min_count, jobs=args.jobs)
    print("utterances:", sizes)


if __name__ == "__main__":
    main()
