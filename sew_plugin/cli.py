"""The ``sew`` command line: one entry point, one subcommand per job.

Examples::

    sew user-dir            # path to pass as common.user_dir
    fairseq-hydra-train common.user_dir=$(sew user-dir) \\
        --config-dir configs/pretraining --config-name sew_tiny task.data=/path/to/manifests
"""

import argparse
import sys
from typing import List, Optional

from . import USER_DIR


def _user_dir(args: argparse.Namespace) -> int:
    print(USER_DIR)
    return 0


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sew", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("user-dir", help="print the path to pass as fairseq's common.user_dir")
    p.set_defaults(func=_user_dir)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
