"""One error type for bad input, always naming where the problem is (file, and line when known),
and the checks of the files and folders a command writes, made before it starts its work."""

import os
import tempfile
from pathlib import Path
from typing import Iterable, List, Optional, Union

BOM = "\ufeff"


def printable(text: str) -> str:
    """``text`` with control characters (a tab or line break in a file name) and undecodable bytes
    of a file name (Python's surrogate escapes) written as escapes: one message stays one line, one
    TSV row stays one row, and writing it as UTF-8 cannot fail."""
    out = []
    for ch in text:
        if "\udc80" <= ch <= "\udcff":  # a byte of a non-UTF-8 file name, as os.fsdecode keeps it
            out.append(f"\\x{ord(ch) - 0xdc00:02x}")
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        else:
            out.append(ascii(ch)[1:-1])
    return "".join(out)


class DataError(ValueError):
    """Bad input data: ``where`` is ``file`` or ``file:line``."""

    def __init__(self, path: Union[str, Path], message: str, line: Optional[int] = None):
        self.where = printable(f"{path}:{line}" if line is not None else str(path))
        self.path, self.line, self.message = path, line, printable(message)
        super().__init__(f"{self.where}: {self.message}")


class DataErrors(ValueError):
    """Several bad inputs, reported together so a user can fix them in one pass."""

    def __init__(self, what: str, errors: List[DataError], hint: str = ""):
        self.errors = errors
        shown = "\n".join(f"  {e}" for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{len(errors)} bad {what}:\n{shown}{more}" + (f"\n{hint}" if hint else ""))


def check_fraction(value: float) -> float:
    """``--valid-percent``: a fraction in [0, 1), as fairseq takes it (0.01 is 1% of the files)."""
    if not 0 <= value < 1:
        hint = f" (for {value:g}% write {value / 100:g})" if 1 <= value < 100 else ""
        raise ValueError(f"--valid-percent {value:g}: a fraction in [0, 1), as in fairseq{hint}")
    return value


def refuse_bad(what: str, problems: List[DataError], skip_bad: bool, anything_left: bool, hint: str = "") -> None:
    """Bad inputs stop a command, all listed, unless ``skip_bad`` leaves them out; even then when
    nothing would be left to write."""
    if problems and (not skip_bad or not anything_left):
        default = "none is left: fix them" if skip_bad else "fix them, or pass --skip-bad to leave them out"
        raise DataErrors(what, problems, default if skip_bad or not hint else hint)


def output_dir(dest: Union[str, Path], option: str = "--dest") -> Path:
    """``dest`` as a folder to write into, created if need be, refused by ``option`` (not crashed on
    after the work) when it is a file, lies under a file, or cannot be written."""
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=dest):
            pass
    except FileExistsError:
        raise DataError(dest, f"{option} is a file, expected a folder") from None
    except OSError as err:
        raise DataError(dest, f"{option}: cannot write here ({err.strerror})") from None
    return dest


def output_file(dest: Union[str, Path], overwrite: bool = False, option: str = "--dest") -> Path:
    """``dest`` as a file to write, its folder created and checked (``output_dir``); a directory,
    or an existing file without ``overwrite``, is refused."""
    dest = Path(dest)
    if dest.is_dir():
        raise DataError(dest, f"is a directory: {option} names the file to write")
    refuse_existing([dest], overwrite)
    output_dir(dest.parent, f"the folder of {option}")
    return dest


def refuse_existing(paths: Iterable[Path], overwrite: bool, why: str = "") -> List[Path]:
    """The ``paths`` that exist; without ``overwrite`` any of them is refused, all named, before the
    command does its work (an earlier run's outputs left beside new ones are read together later)."""
    found = [Path(p) for p in paths if os.path.lexists(p)]
    if found and not overwrite:
        names = ", ".join(map(str, found))
        raise ValueError(f"{names} already exist{'s' * (len(found) == 1)}{why}; pass --overwrite to replace "
                         f"{'it' if len(found) == 1 else 'them'}, or write elsewhere")
    return found


def read_lines(path: Union[str, Path], what: str = "file", fairseq_reads: bool = False) -> List[str]:
    """The lines of a UTF-8 text file, split as Python's text files split them (``\\n``, ``\\r\\n``
    or ``\\r``; fairseq reads manifests and labels that way), a leading byte-order mark dropped.

    A missing file, a directory, or bytes that are not UTF-8 raise ``DataError`` naming the file
    (and the line of the first bad byte). A file that fairseq reads too (manifests, labels,
    dictionaries) must not start with a byte-order mark: fairseq keeps it as part of the first
    path or letter (a letter it then maps to ``<unk>``).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(path, f"is a directory, expected a {what}")
    if not path.is_file():
        raise DataError(path, f"{what} not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(path, f"not UTF-8 text (byte 0x{data[err.start]:02x}); re-encode the {what} as UTF-8", line) from None
    if fairseq_reads and text.startswith(BOM):
        raise DataError(path, f"starts with a UTF-8 byte-order mark, which fairseq reads as part of the first "
                        f"{'path' if what == 'manifest' else 'symbol'}: save the {what} without it", 1)
    text = text.lstrip(BOM).replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines
