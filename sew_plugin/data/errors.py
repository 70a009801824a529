"""One error type for bad input, always naming where the problem is (file, and line when known)."""

from pathlib import Path
from typing import List, Optional, Union


class DataError(ValueError):
    """Bad input data: ``where`` is ``file`` or ``file:line``."""

    def __init__(self, path: Union[str, Path], message: str, line: Optional[int] = None):
        self.where = f"{path}:{line}" if line is not None else str(path)
        self.message = message
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
