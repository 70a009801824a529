"""The ``sew`` command line: one entry point, one subcommand per job.

Examples::

    sew user-dir                                      # path to pass as common.user_dir
    sew manifest /data/wavs --dest data --valid-percent 5
    sew labels data/train.tsv /data/transcripts --dest data
    sew labels data/valid.tsv /data/transcripts --dest data    # checked against data/dict.ltr.txt
    sew lexicon data/train.wrd --dest data/lexicon.txt
    sew lm data/train.wrd --dest data/lm.arpa --order 3
    fairseq-hydra-train --config-dir configs/pretraining --config-name sew_tiny \\
        common.user_dir=$(sew user-dir) task.data=$PWD/data
    sew infer checkpoints/checkpoint_best.pt data/valid.tsv --decoder kenlm \\
        --lm lm.arpa --lexicon data/lexicon.txt
    sew sweep checkpoints/checkpoint_best.pt data/valid.tsv --points 1,1,1 2,1,1 2,2,1 --out sweep
    sew bench --models sew_d_mid w2v2_base --seconds 10 --batch-size 1 8 --out bench

Bad input stops a command with a message naming the file and line; counts of what went in and
what came out are printed on success. Errors exit with status 2, bad input and bad option values
alike (argparse's own status for a bad option).
"""

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import List, Optional

from . import USER_DIR


def _user_dir(args) -> int:
    print(USER_DIR)
    return 0


def _manifest(args) -> int:
    from .data.manifest import write_manifests

    report = write_manifests(
        args.audio_dir, args.dest, args.ext, args.valid_percent, args.seed, args.sample_rate, args.skip_bad, args.split,
        args.header_only,
    )
    for err in report.skipped:
        print(f"skipped {err}", file=sys.stderr)
    print(report.summary())
    return 0


def _labels(args) -> int:
    from .data.labels import write_labels

    report = write_labels(args.manifest, args.transcripts, args.dest, args.dict, args.upper, args.skip_bad,
                          args.sample_rate)
    for err in report.skipped:
        print(f"skipped {err}", file=sys.stderr)
    if report.warning:
        print(f"sew labels: warning: {report.warning}", file=sys.stderr)
    print(report.summary())
    return 0


def _lexicon(args) -> int:
    from .data.labels import write_lexicon

    count, path = write_lexicon(args.words, args.dest, args.dict)
    print(f"{count} words written to {path}")
    return 0


def _lm(args) -> int:
    from .data.ngram import write_arpa

    sentences, vocab = write_arpa(args.text, args.dest, args.order)
    print(f"{args.order}-gram ARPA model from {sentences} sentences, {vocab} words: {args.dest}")
    return 0


def at_least(low, kind=int):
    """argparse type: a number (``int`` or ``float``, finite) >= ``low``; absurd values stop at the
    command line, by option."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not (value >= low and math.isfinite(value)):  # NaN fails the comparison
            raise argparse.ArgumentTypeError(f"must be >= {low}{'' if kind is int else ' and finite'}, got {value}")
        return value

    return parse


def _percent(text: str) -> float:
    value = float(text)
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"must be in [0, 100), got {value}")
    return value


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """A description as written, and every option's default where it has one (none for a switch,
    an option that is off unless given, or an empty list)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _module_command(sub, name: str, help: str, module) -> None:
    """A subcommand run by ``module.main(args)``, its options from ``module.add_arguments`` (their
    defaults shown in ``--help``) and its description the module's docstring."""
    p = sub.add_parser(name, help=help, description=module.__doc__, formatter_class=_HelpFormatter)
    module.add_arguments(p)
    p.set_defaults(func=module.main)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sew", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("user-dir", help="print the path to pass as fairseq's common.user_dir",
                       formatter_class=_HelpFormatter, description="Print this plugin's package folder, "
                       "for fairseq's common.user_dir:\n\n    fairseq-hydra-train common.user_dir=$(sew user-dir) ...")
    p.set_defaults(func=_user_dir)

    p = sub.add_parser("manifest", help="write fairseq manifests (train.tsv, valid.tsv) for an audio folder")
    p.add_argument("audio_dir", type=Path, help="folder searched recursively for --ext files")
    p.add_argument("--dest", type=Path, required=True, help="folder to write <split>.tsv (and valid.tsv) to")
    p.add_argument("--ext", default="wav", choices=["wav", "flac"])
    p.add_argument("--valid-percent", type=_percent, default=0.0, help="share of files for valid.tsv (0: none)")
    p.add_argument("--seed", type=int, default=42, help="seed of the train/valid split")
    p.add_argument("--sample-rate", type=at_least(1), default=16000, help="required sample rate")
    p.add_argument("--split", default="train", help="name of the main manifest, e.g. test for held-out audio")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave bad files out (listed in DEST/<split>.skipped_audio.tsv)")
    p.add_argument("--header-only", action="store_true",
                   help="read only the headers (fast); a FLAC cut short or NaN/inf samples are then found in "
                   "training or inference instead of here")
    p.set_defaults(func=_manifest)

    p = sub.add_parser("labels", help="write <split>.wrd, <split>.ltr and dict.ltr.txt for a manifest")
    p.add_argument("manifest", type=Path)
    p.add_argument("transcripts", type=Path, nargs="+",
                   help="'ID TEXT' files (or folders of *.trans.txt), or ID<TAB>TEXT .tsv files")
    p.add_argument("--dest", type=Path, required=True,
                   help="folder to write <split>.wrd, <split>.ltr and (if it does not exist) dict.ltr.txt to")
    p.add_argument("--dict", type=Path, help="letter dictionary to check against (default: DEST/dict.ltr.txt if it exists)")
    p.add_argument("--upper", action="store_true", help="upper-case transcripts (LibriSpeech style)")
    p.add_argument("--sample-rate", type=at_least(1), default=16000, help="required sample rate of the manifest's audio")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave bad utterances out of a rewritten DEST/<split>.tsv (listed in <split>.skipped.tsv)")
    p.set_defaults(func=_labels)

    p = sub.add_parser("lexicon", help="write a flashlight lexicon (WORD W O R D |) for word lists or .wrd files")
    p.add_argument("words", type=Path, nargs="+", help="word lists or .wrd files (every token is a word)")
    p.add_argument("--dest", type=Path, required=True, help="the lexicon file to write")
    p.add_argument("--dict", type=Path, help="letter dictionary every spelling must fit")
    p.set_defaults(func=_lexicon)

    p = sub.add_parser("lm", help="write a word n-gram ARPA language model (Witten-Bell) from text")
    p.add_argument("text", type=Path, nargs="+", help="one sentence per line, e.g. train.wrd")
    p.add_argument("--dest", type=Path, required=True, help="the ARPA file to write")
    p.add_argument("--order", type=at_least(2), default=3, help="n-gram order (KenLM needs at least 2)")
    p.set_defaults(func=_lm)

    from . import bench, infer, sweep
    from .interop import export_hf, onnx

    _module_command(sub, "infer", "transcribe a manifest with a CTC checkpoint; WER, UER and timing", infer)
    _module_command(sub, "sweep", "WER and time of one checkpoint at several St-SEW points or early-exit thresholds", sweep)
    _module_command(sub, "bench", "forward time, MACs and memory of models side by side", bench)
    _module_command(sub, "export-hf", "write a checkpoint as a HuggingFace transformers model directory", export_hf)
    _module_command(sub, "export-onnx", "export a fine-tuned CTC checkpoint to ONNX (dynamic batch and length)", onnx)
    return parser


def _quiet_libraries() -> None:
    """Keep the output to results and errors: fairseq's text-to-speech task logs a tensorboardX hint
    at INFO on import; kineto (torch's profiler, ``sew bench``'s CPU peak memory) prints
    profiler_start/stop lines at its top level (above ERROR, so its errors go too); c10's C++ log
    warns about blocks allocated before profiling (its other C++ log warnings go too; torch's
    Python-side warnings stay). Both variables are read when the library starts (c10's at torch's
    import, so before ``get_parser``): set them yourself to see those messages again."""
    logging.getLogger("fairseq.tasks.text_to_speech").setLevel(logging.WARNING)
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # libkineto: 5 (USDT) is its highest level
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


def main(argv: Optional[List[str]] = None) -> int:
    from .data.errors import DataError, DataErrors

    _quiet_libraries()
    args = get_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, DataErrors) as err:
        print(f"sew {args.command}: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as err:
        if isinstance(err.code, str):  # a command's own "sew X: error: ..." (a misused option): status 2
            print(err.code, file=sys.stderr)
            err.code = 2
        raise


if __name__ == "__main__":
    sys.exit(main())
