"""``sew transcribe``: recordings as people have them (any format libsndfile reads, any rate, any
channels, any length) to transcripts with word times and confidences.

    sew transcribe ckpt.pt interview.mp3                          # the text, on standard output
    sew transcribe ckpt.pt recordings/ --out transcripts --format txt json srt vtt ctm
    sew transcribe ckpt.pt recordings/ --out t --num-shards 4 --shard-id $SLURM_ARRAY_TASK_ID

Folders are searched recursively; DIR/<path under the folder>.<format> is written for each file
(a file given by name: DIR/<its name>.<format>). Long recordings run in overlapping windows
(``--window``, ``--context``). Each word's confidence is the mean posterior of its letters over
their frames. ``--num-shards N --shard-id K`` (fairseq's names) take every N-th file from the K-th
of the sorted list: N runs, on any machines, cover every file once and write what one run writes.
A file that cannot be decoded, is cut short, is empty or holds NaN/inf stops the run naming it;
``--skip-bad`` lists it, counts it and goes on. Without ``--out`` each recording is a ``path: text``
line on standard output. ``--decode-workers N`` (``--decoder kenlm``) runs the beam search
in N processes while the model goes on to the next recordings; the files are those of one process.
"""

import collections
import sys
import time
from pathlib import Path
from typing import Dict, List

import soundfile as sf
from tqdm import tqdm

from ..data.errors import DataError
from ..inference.formats import FORMATS
from .infer import (add_decoder_arguments, add_setting_arguments, apply_settings, beam_options, check_decoder_options,
                    decoding_workers, load)
from .options import at_least, check_outputs, refusing


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=Path, help="fine-tuned CTC checkpoint (sew_ctc, wav2vec_ctc, ...)")
    p.add_argument("audio", type=Path, nargs="+", help="audio files, or folders searched recursively")
    p.add_argument("--out", type=Path, help="folder for one file per recording and format (default: the text on "
                   "standard output)")
    p.add_argument("--format", nargs="+", choices=list(FORMATS),
                   help="files written per recording with --out (default: txt json)")
    p.add_argument("--data", type=Path, help="folder holding the checkpoint's dict.ltr.txt, for a checkpoint that "
                   "does not carry its dictionary (default: the folder it was fine-tuned from); refused where its "
                   "dictionary differs from one the checkpoint carries, or has another size than its output layer")
    add_decoder_arguments(p)
    add_setting_arguments(p)
    p.add_argument("--window", type=at_least(1.0, float), default=20.0, help="seconds of audio per forward")
    p.add_argument("--context", type=at_least(0.0, float), default=2.0,
                   help="seconds by which consecutive windows overlap on each side of their boundary")
    p.add_argument("--batch-size", type=at_least(1), default=4, help="windows per forward")
    p.add_argument("--skip-bad", action="store_true", help="list and count files that give no audio, and go on")
    p.add_argument("--overwrite", action="store_true", help="replace transcripts of an earlier run in --out")
    p.add_argument("--num-shards", type=at_least(1), default=1, help="split the files among this many runs")
    p.add_argument("--shard-id", type=at_least(0), default=0, help="which of the --num-shards runs this is")


def output_names(sources: List[Path], files: List[Path], unique: bool = True) -> Dict[Path, Path]:
    """Each file's output path without extension: its path under the folder it was found in, or
    its name for a file given by name; with ``unique`` (``--out``), two files with one name are
    refused before any work."""
    names, taken = {}, {}
    for path in files:
        folder = next((s for s in sources if s.is_dir() and path.is_relative_to(s)), None)
        name = path.relative_to(folder).with_suffix("") if folder else Path(path.stem)
        if unique and name in taken:
            raise DataError(path, f"would be written to the same files as {taken[name]} ({name}.*): rename one, "
                            "or transcribe them into different --out folders")
        names[path], taken[name] = name, path
    return names


def main(args) -> int:
    from ..data.recordings import EXTENSIONS, find_recordings, load_recording
    from ..inference.windows import Windowing

    if args.shard_id >= args.num_shards:
        raise SystemExit(f"sew transcribe: error: --shard-id {args.shard_id} must be below --num-shards {args.num_shards}")
    if args.format and not args.out:
        raise SystemExit("sew transcribe: error: --format needs --out (without it the text goes to standard output)")
    check_decoder_options(args, "transcribe")
    formats = args.format or ["txt", "json"]
    with refusing("transcribe"):
        windowing = Windowing(args.window, args.context, args.batch_size)
    found, again, hidden, other = find_recordings(args.audio)
    # over every shard's files: no two shards write one name
    names = output_names(list(args.audio), found, unique=args.out is not None)
    files = found[args.shard_id :: args.num_shards]
    outputs = {f: [args.out / f"{names[f]}.{fmt}" for fmt in formats] for f in files} if args.out else {}
    if args.out:
        check_outputs("transcribe", args.out, [p.relative_to(args.out) for paths in outputs.values() for p in paths],
                      args.overwrite)
    # files of these recordings in the formats this run does not write (an earlier run's, or the
    # user's own): left alone, and said in the summary, since they may not match the new transcripts
    others = [args.out / f"{names[f]}.{fmt}" for f in files for fmt in FORMATS if fmt not in formats] if args.out else []
    beside = [path for path in others if path.exists()]

    # fairseq's import (2-4 s), after every check of the options and files above
    from ..inference.transcriber import Transcriber, describe

    model, decoder, normalize = load(args, "transcribe", args.data, named=True)
    apply_settings(model, decoder, args, "transcribe")
    settings = describe(args.checkpoint, args.decoder, args.lm, args.lexicon, beam_options(args), args.operating_point,
                        args.cif_lambda, args.exit_policy, args.threshold, args.exit_layer, args.dtype)
    with refusing("transcribe"):  # a window this model cannot step by, or a model without a frame period
        serial = Transcriber(model, decoder, normalize, windowing, args.device, settings)
    seconds = {f: _seconds(f) for f in files}  # each header read once, for the progress bar
    skipped, mixed, resampled, audio_s = [], 0, 0, 0.0
    pending = collections.deque()  # (file, recording, its transcript once decoded), decoding in the workers

    def finish(path, recording, transcript) -> None:
        nonlocal mixed, resampled, audio_s
        transcript = transcript()
        mixed += recording.channels > 1
        resampled += recording.sample_rate != 16000
        audio_s += transcript.seconds
        if args.out:
            for fmt, dest in zip(formats, outputs[path]):
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(FORMATS[fmt](transcript), encoding="utf-8")
        else:
            print(f"{path}: {transcript.text}")

    start = time.perf_counter()
    with decoding_workers(args, decoder) as decoding, \
            tqdm(total=sum(seconds.values()), unit="s", unit_scale=True, desc="transcribing", disable=None,
                 leave=False) as progress:
        transcriber = serial.with_decoder(decoding)
        for path in files:
            shown = [0.0]  # seconds of this file on the bar: it moves after each batch of windows

            def advance(share, path=path, shown=shown) -> None:
                progress.update(seconds[path] * share - shown[0])
                shown[0] = seconds[path] * share

            try:
                recording = load_recording(path)
                pending.append((path, recording, transcriber.start(recording, names[path].as_posix(), advance)))
            except DataError as err:  # the file's fault; what is the model's or the options' was refused above
                if not args.skip_bad:
                    while pending:  # what was transcribed before it is written
                        finish(*pending.popleft())
                    raise
                skipped.append(err)
                print(f"skipped {err}", file=sys.stderr)
            progress.update(seconds[path] - shown[0])
            while len(pending) > args.decode_workers - 1:
                finish(*pending.popleft())
        while pending:
            finish(*pending.popleft())
    elapsed = time.perf_counter() - start
    done = len(files) - len(skipped)
    shard = f"shard {args.shard_id} of {args.num_shards}: " if args.num_shards > 1 else ""
    notes = [f"{n} {what}" for n, what in ((mixed, "mixed down to mono"), (resampled, "resampled to 16 kHz")) if n]
    notes += [f"{path} left out: the same file as {first}" for path, first in again]
    if hidden:  # in every shard's summary, as the files found again
        notes.append(f"{len(hidden)} hidden files or folders left out, as fairseq's glob: "
                     f"{', '.join(map(str, hidden[:3]))}{', ...' if len(hidden) > 3 else ''}")
    if beside:
        notes.append(f"{len(beside)} files of these recordings in other formats were there before and are left "
                     f"as they were: {', '.join(map(str, beside[:3]))}{', ...' if len(beside) > 3 else ''}")
    if other:  # a folder's .m4a, .txt, ...: counted, so that nothing is left out unsaid
        kinds = sorted({p.suffix.lower() or p.name for p in other})
        notes.append(f"{len(other)} other files left out for their extension ({', '.join(kinds[:5])}"
                     f"{', ...' if len(kinds) > 5 else ''}; recordings are {', '.join(EXTENSIONS)})")
    rtf = f"real-time factor {elapsed / audio_s:.4f}" if audio_s else "no audio transcribed"
    print(f"{shard}transcribed {done} of {len(files)} files ({audio_s:.1f} s of audio), skipped "
          f"{len(skipped)}{'; ' + '; '.join(notes) if notes else ''}; {elapsed:.2f} s, {rtf}",
          file=sys.stderr if not args.out else sys.stdout)
    return 0


def _seconds(path: Path) -> float:
    """The duration a header states, for the progress bar (0 when it cannot be read: reported later)."""
    try:
        info = sf.info(str(path))
        return info.frames / info.samplerate
    except Exception:
        return 0.0
