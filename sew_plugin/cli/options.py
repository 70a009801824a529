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
            raise argparse.ArgumentTypeError(f"must be >= {low}{'' if kind is int else ' and finite'}, got {value}")
        return value

    return parse


def device(text: str) -> str:
    """argparse type: a torch device this torch can use (cpu, cuda, cuda:N)."""
    import torch

    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: this torch ({torch.__version__}) sees no CUDA device; on a GPU "
                                         "machine install a CUDA build of torch (README: Install)")
    if parsed.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")
    return text


def fraction(text: str) -> float:
    """argparse type: a fraction in [0, 1), as fairseq's ``--valid-percent`` takes it (0.01 is 1%);
    a value above 1 is refused with that hint, not read as a tiny share."""
    value = at_least(0.0, float)(text)
    if value >= 1:
        hint = f" (for {value:g}% write {value / 100:g})" if value < 100 else ""
        raise argparse.ArgumentTypeError(f"a fraction in [0, 1), as in fairseq, got {value:g}{hint}")
    return value


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
    except (DataError, DataErrors):
        raise
    except ValueError as err:
        prefix = f"{context}: " if context else ""
        raise SystemExit(f"sew {command}: error: {prefix}{err}") from None
