"""The ``sew`` command line: one entry point, one subcommand per job.

Examples::

    sew user-dir                                      # path to pass as common.user_dir
    sew manifest /data/wavs --dest data --valid-percent 0.05
    sew labels data/train.tsv /data/transcripts --dest data
    sew labels data/valid.tsv /data/transcripts --dest data    # checked against data/dict.ltr.txt
    sew lexicon data/train.wrd --dest data/lexicon.txt
    sew lm data/train.wrd --dest data/lm.arpa --order 3
    fairseq-hydra-train --config-dir configs/pretraining --config-name sew_tiny \\
        common.user_dir=$(sew user-dir) task.data=$PWD/data
    sew infer checkpoints/checkpoint_best.pt data/valid.tsv --decoder kenlm \\
        --lm lm.arpa --lexicon data/lexicon.txt
    sew transcribe checkpoints/checkpoint_best.pt talks/ --out transcripts --format txt srt json
    sew sweep checkpoints/checkpoint_best.pt data/valid.tsv --points 1,1,1 2,1,1 2,2,1 --out sweep
    sew tune-lm checkpoints/checkpoint_best.pt data/valid.tsv --lm lm.arpa --lexicon data/lexicon.txt --out tune
    sew bench --models sew_d_mid w2v2_base --seconds 10 --batch-size 1 8 --out bench

Bad input stops a command with a message naming the file and line; counts of what went in and
what came out are printed on success. Errors exit with status 2, bad input and bad option values
alike (argparse's own status for a bad option).
"""

import argparse
import logging
import os
import sys
from typing import List, Optional

from .. import USER_DIR
from .options import HelpFormatter

# The command layer: the only part of the package that knows argparse and exits. Each module here
# parses a subcommand's options and calls the library (sew_plugin.data, .inference, .interop), whose
# ValueErrors and DataErrors it turns into one error line and exit status 2.


def _user_dir(args) -> int:
    print(USER_DIR)
    return 0


def _module_command(sub, name: str, help: str, add_arguments, main, description: str) -> None:
    """A subcommand run by ``main(args)`` with the options of ``add_arguments`` (their defaults
    shown in ``--help``) and the description of the module that does the work."""
    p = sub.add_parser(name, help=help, description=description, formatter_class=HelpFormatter)
    add_arguments(p)
    p.set_defaults(func=main)


def get_parser() -> argparse.ArgumentParser:
    from . import bench, data, export, infer, sweep, transcribe, tune_lm

    parser = argparse.ArgumentParser(
        prog="sew", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("user-dir", help="print the path to pass as fairseq's common.user_dir",
                       formatter_class=HelpFormatter, description="Print this plugin's package folder, "
                       "for fairseq's common.user_dir:\n\n    fairseq-hydra-train common.user_dir=$(sew user-dir) ...")
    p.set_defaults(func=_user_dir)
    data.add_parsers(sub)
    _module_command(sub, "infer", "transcribe a manifest with a CTC checkpoint; WER, UER and timing",
                    infer.add_arguments, infer.main, infer.__doc__)
    _module_command(sub, "transcribe", "transcribe recordings (any format, rate, channels, length) with word "
                    "times and confidences", transcribe.add_arguments, transcribe.main, transcribe.__doc__)
    _module_command(sub, "sweep", "WER and time of one checkpoint at several St-SEW points, CIF lambdas or "
                    "early-exit thresholds",
                    sweep.add_arguments, sweep.main, sweep.__doc__)
    _module_command(sub, "tune-lm", "choose the beam decoder's LM weight and word score for a checkpoint on "
                    "held-out data (a grid)", tune_lm.add_arguments, tune_lm.main, tune_lm.__doc__)
    _module_command(sub, "bench", "forward time, MACs and memory of models side by side",
                    bench.add_arguments, bench.main, bench.__doc__)
    _module_command(sub, "export-hf", "write a checkpoint as a HuggingFace transformers model directory",
                    export.add_hf_arguments, export.export_hf, export.hf_export.__doc__)
    _module_command(sub, "export-onnx", "export a fine-tuned CTC checkpoint to ONNX (dynamic batch and length)",
                    export.add_onnx_arguments, export.export_onnx, export.onnx.__doc__)
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
    from ..data.errors import DataError, DataErrors, printable

    _quiet_libraries()
    args = get_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, DataErrors) as err:
        print(f"sew {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file system refusing a write the checks could not foresee (disk full, say)
        where = printable(f"{err.filename}: ") if err.filename else ""
        print(f"sew {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except SystemExit as err:
        if isinstance(err.code, str):  # a command's own "sew X: error: ..." (a misused option): status 2
            print(err.code, file=sys.stderr)
            err.code = 2
        raise

