"""One error type for bad input, always naming where the problem is (file, and line when known)."""

from pathlib import Path
from typing import List, Optional, Union


class DataError(ValueError):
    """Bad input data: ``where`` is ``file`` or ``file:line``."""

    def __init__(self, path: Union[str, Path], message: str, line: Optional[int] = None):
        self.where = f"{path}:{line}" if line is not None else str(path)
        self.path, self.line, self.message = path, line, message
        super().__init__(f"{self.where}: {message}")


class DataErrors(ValueError):
    """Several bad inputs, reported together so a user can fix them in one pass."""

    def __init__(self, what: str, errors: List[DataError], hint: str = ""):
        self.errors = errors
        shown = "\n".join(f"  {e}" for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{len(errors)} bad {what}:\n{shown}{more}" + (f"\n{hint}" if hint else ""))


def output_file(dest: Union[str, Path]) -> Path:
    """``dest`` as a file to write, its folder created; a directory is refused, not crashed on."""
    dest = Path(dest)
    if dest.is_dir():
        raise DataError(dest, "is a directory: --dest names the file to write")
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


def read_lines(path: Union[str, Path], what: str = "file") -> List[str]:
    """The lines of a UTF-8 text file, split as Python's text files split them (``\\n``, ``\\r\\n``
    or ``\\r``; fairseq reads manifests and labels that way), a leading byte-order mark dropped.

    A missing file, a directory, or bytes that are not UTF-8 raise ``DataError`` naming the file
    (and the line of the first bad byte).
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
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines
