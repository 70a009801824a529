"""``sew manifest``, ``sew labels``, ``sew lexicon`` and ``sew lm``: fairseq's data files, checked
(the work is ``sew_plugin.data``'s)."""

import sys
from pathlib import Path

from ..data.labels import AUDIO_SUFFIXES
from .options import HelpFormatter, at_least, refusing


def manifest(args) -> int:
    from ..data.manifest import write_manifests

    with refusing("manifest"):
        report = write_manifests(args.audio_dir, args.dest, args.ext, args.valid_percent, args.seed, args.sample_rate,
                                 args.skip_bad, args.split, args.header_only, args.overwrite)
    for err in report.skipped:
        print(f"skipped {err}", file=sys.stderr)
    print(report.summary())
    return 0


def labels(args) -> int:
    from ..data.labels import write_labels

    with refusing("labels"):
        report = write_labels(args.manifest, args.transcripts, args.dest, args.dict, args.upper, args.skip_bad,
                              args.sample_rate, args.overwrite)
    for err in report.skipped:
        print(f"skipped {err}", file=sys.stderr)
    if report.warning:
        print(f"sew labels: warning: {report.warning}", file=sys.stderr)
    print(report.summary())
    return 0


def lexicon(args) -> int:
    from ..data.labels import write_lexicon

    with refusing("lexicon"):
        count, path = write_lexicon(args.words, args.dest, args.dict, args.overwrite)
    print(f"{count} words written to {path}")
    return 0


def lm(args) -> int:
    from ..data.ngram import write_arpa

    with refusing("lm"):
        sentences, vocab = write_arpa(args.text, args.dest, args.order, args.overwrite)
    print(f"{args.order}-gram ARPA model from {sentences} sentences, {vocab} words: {args.dest}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("manifest", formatter_class=HelpFormatter, help="write fairseq manifests (train.tsv, valid.tsv) for an audio folder")
    p.add_argument("audio_dir", type=Path, help="folder searched recursively for --ext files")
    p.add_argument("--dest", type=Path, required=True, help="folder to write <split>.tsv (and valid.tsv) to")
    p.add_argument("--ext", default="wav", choices=[s.lstrip(".") for s in AUDIO_SUFFIXES], help="audio files to list")
    p.add_argument("--valid-percent", type=at_least(0.0, float), default=0.0,
                   help="fraction of the files for valid.tsv, as in fairseq (0.01: 1%%; 0: none, where fairseq's "
                   "default is 0.01)")
    p.add_argument("--seed", type=int, default=42, help="seed of the train/valid split")
    p.add_argument("--sample-rate", type=at_least(1), default=16000, help="required sample rate")
    p.add_argument("--split", default="train", help="name of the main manifest, e.g. test for held-out audio")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave bad files out (listed in DEST/<split>.skipped_audio.tsv)")
    p.add_argument("--header-only", action="store_true",
                   help="read only the headers (fast); a FLAC cut short or NaN/inf samples are then found in "
                   "training or inference instead of here")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of an earlier run for these splits (manifests, labels, skip lists); "
                   "those not written again are removed")
    p.set_defaults(func=manifest)

    p = sub.add_parser("labels", formatter_class=HelpFormatter, help="write <split>.wrd, <split>.ltr and dict.ltr.txt for a manifest")
    p.add_argument("manifest", type=Path, help="the fairseq manifest (.tsv) whose rows to label")
    p.add_argument("transcripts", type=Path, nargs="+",
                   help="'ID TEXT' files (or folders of *.trans.txt), or ID<TAB>TEXT .tsv files")
    p.add_argument("--dest", type=Path, required=True,
                   help="folder to write <split>.wrd, <split>.ltr and (if it does not exist) dict.ltr.txt to")
    p.add_argument("--dict", type=Path, help="letter dictionary to check against (default: DEST/dict.ltr.txt if it exists)")
    p.add_argument("--upper", action="store_true", help="upper-case transcripts (LibriSpeech style)")
    p.add_argument("--sample-rate", type=at_least(1), default=16000, help="required sample rate of the manifest's audio")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave bad utterances out of a rewritten DEST/<split>.tsv (listed in <split>.skipped.tsv)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the split's label files (and DEST/<split>.tsv) of an earlier run")
    p.set_defaults(func=labels)

    p = sub.add_parser("lexicon", formatter_class=HelpFormatter, help="write a flashlight lexicon (WORD W O R D |) for word lists or .wrd files")
    p.add_argument("words", type=Path, nargs="+", help="word lists or .wrd files (every token is a word)")
    p.add_argument("--dest", type=Path, required=True, help="the lexicon file to write")
    p.add_argument("--dict", type=Path, help="letter dictionary every spelling must fit")
    p.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    p.set_defaults(func=lexicon)

    p = sub.add_parser("lm", formatter_class=HelpFormatter, help="write a word n-gram ARPA language model (Witten-Bell) from text")
    p.add_argument("text", type=Path, nargs="+", help="one sentence per line, e.g. train.wrd")
    p.add_argument("--dest", type=Path, required=True, help="the ARPA file to write")
    p.add_argument("--order", type=at_least(2), default=3, help="n-gram order (KenLM needs at least 2)")
    p.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    p.set_defaults(func=lm)
