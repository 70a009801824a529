"""What the subcommands share: argparse types that refuse absurd values by option, the help
formatter, and ``refusing``, which turns a library ``ValueError`` into the command's error line."""

import argparse
import contextlib
import math


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
            if low == -math.inf:
                raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
            raise argparse.ArgumentTypeError(f"must be >= {low}{'' if kind is int else ' and finite'}, got {value}")
        return value

    return parse


def finite(text: str) -> float:
    """argparse type: a finite number (NaN and infinities stop at the command line, by option)."""
    return at_least(-math.inf, float)(text)


def device(text: str) -> str:
    """argparse type: a torch device this torch can use (cpu, cuda, cuda:N)."""
    from ..inference.devices import check_device

    try:
        check_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def check_outputs(command: str, folder, names, overwrite: bool, option: str = "--out") -> None:
    """Before any work: ``folder`` (``option``) can be written, and without ``overwrite`` holds none of
    ``names`` from an earlier run."""
    from ..data.errors import output_dir, refuse_existing

    with refusing(command):
        folder = output_dir(folder, option)
        refuse_existing([folder / name for name in names], overwrite)


def add_overwrite_argument(p, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what} of an earlier run")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """A description as written, and every option's default where it has one (none for a switch,
    an option that is off unless given, or an empty list)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


@contextlib.contextmanager
def refusing(command: str, context: str = ""):
    """A ``ValueError`` of the library inside becomes ``sew COMMAND: error: [CONTEXT: ]message``
    (exit status 2, no traceback); a ``DataError`` names its file already and passes on to ``main``."""
    from ..data.errors import DataError, DataErrors

    try:
        yield
    except (DataError, DataErrors, UnicodeError):  # a UnicodeError is a bug to see, not bad input
        raise
    except ValueError as err:
        prefix = f"{context}: " if context else ""
        raise SystemExit(f"sew {command}: error: {prefix}{err}") from None
