"""fairseq audio manifests: the first line is the audio root, then ``relative/path<TAB>num_samples``.

``write_manifests`` replaces fairseq's ``examples/wav2vec/wav2vec_manifest.py`` (not in the wheel),
with checked audio and a deterministic order and split.
"""

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .audio import MIN_SAMPLES, SAMPLE_RATE, audio_frames, decode
from .errors import DataError, DataErrors, read_lines


@dataclass
class Manifest:
    root: Path
    entries: List[Tuple[str, int]]  # (path relative to root, number of samples)
    path: Path = None
    lines: List[int] = None  # the manifest line of each entry (None: entry i is on line i + 2)

    def audio_path(self, index: int) -> Path:
        return self.root / self.entries[index][0]

    def line(self, index: int) -> int:
        return self.lines[index] if self.lines is not None else index + 2


def _parse_row(line: str) -> Tuple[str, int]:
    if not line.strip():
        raise ValueError("empty line")
    cols = line.split("\t")
    if len(cols) != 2:
        raise ValueError(f"expected 'relative/path<TAB>num_samples', got {len(cols)} column(s)")
    if not cols[0].strip():
        raise ValueError("empty audio path")
    try:
        frames = int(cols[1])
    except ValueError:
        raise ValueError(f"number of samples {cols[1]!r} is not an integer") from None
    if frames <= 0:
        raise ValueError(f"number of samples must be positive, got {frames}")
    return cols[0], frames


def read_manifest(path: Path, errors: Optional[List[DataError]] = None) -> Manifest:
    """Parse a manifest, raising ``DataError`` with the file and line for malformed rows.

    With ``errors`` (a list), every malformed row is appended to it and left out instead of
    raising at the first; ``Manifest.lines`` then says on which line each kept entry stands.
    """
    path = Path(path)
    lines = read_lines(path, "manifest")
    if not lines or not lines[0].strip():
        raise DataError(path, "empty manifest: the first line must be the audio root directory", 1)
    entries, numbers = [], []
    for number, line in enumerate(lines[1:], start=2):
        try:
            entries.append(_parse_row(line))
            numbers.append(number)
        except ValueError as err:
            if errors is None:
                raise DataError(path, str(err), number) from None
            errors.append(DataError(path, str(err), number))
    return Manifest(Path(lines[0].strip()), entries, path, numbers)


def row_count_error(path: Path, lines: List[str], manifest: Manifest, kind: str) -> Optional[DataError]:
    """For a file that holds one line per manifest row (labels, segments): None when the counts
    agree, else the error naming both files and the first line without a partner."""
    rows = len(manifest.entries)
    if len(lines) == rows:
        return None
    line = min(len(lines), rows) + 1
    return DataError(path, f"{len(lines)} {kind} lines for the {rows} rows of {manifest.path} "
                     f"(line {line} has no partner)", line)


def check_audio(manifest: Manifest, sample_rate: int = SAMPLE_RATE, min_samples: int = MIN_SAMPLES,
                rows: Optional[Sequence[int]] = None) -> Dict[int, DataError]:
    """Header checks (``audio_frames``) of the file of every entry (or of ``rows``) against its
    sample count: entry index -> ``DataError`` naming the manifest line and the audio file, for
    each bad entry. An audio root (first line) that is not a directory raises at once."""
    if not manifest.root.is_dir():
        raise DataError(manifest.path, f"audio root directory {manifest.root} (the first line) not found", 1)
    errors = {}
    for i in range(len(manifest.entries)) if rows is None else rows:
        rel, frames = manifest.entries[i]
        try:
            found = audio_frames(manifest.root / rel, sample_rate, min_samples)
        except DataError as err:
            errors[i] = DataError(manifest.path, str(err), manifest.line(i))
            continue
        if found != frames:
            errors[i] = DataError(manifest.path, f"{manifest.root / rel} has {found} samples, the manifest says {frames}",
                                  manifest.line(i))
    return errors


def files_below(root: Path, suffix: str) -> Tuple[List[Path], List[Path]]:
    """The files under ``root`` whose name ends in ``suffix`` (any case), following links to folders
    as fairseq's ``glob`` does (each real folder once, so a link cycle ends), and, apart, the links
    among them that point to nothing. ``Path.rglob`` on Python 3.11 follows no folder link."""
    found, dangling, seen = [], [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        for name in names:
            if name.lower().endswith(suffix):
                path = Path(folder) / name
                (found if path.is_file() else dangling).append(path)
    return sorted(found), sorted(dangling)


def check_manifest(path: Path, sample_rate: int = SAMPLE_RATE,
                   left_out_below: Optional[int] = None) -> Tuple[Manifest, List[DataError]]:
    """The manifest at ``path`` and all its bad rows, by line: malformed lines and entries whose audio
    header disagrees with them (``check_audio``). Rows shorter than ``left_out_below`` samples, which
    the caller leaves out (fairseq's ``task.min_sample_size``), are checked without the receptive
    field's floor. A manifest with no utterance is refused at once."""
    errors: List[DataError] = []
    manifest = read_manifest(path, errors)
    if not manifest.entries and not errors:
        raise DataError(path, "manifest has no utterances")
    short = [i for i, (_, n) in enumerate(manifest.entries) if left_out_below is not None and n < left_out_below]
    long = sorted(set(range(len(manifest.entries))) - set(short))
    bad = check_audio(manifest, sample_rate, MIN_SAMPLES, long)
    bad.update(check_audio(manifest, sample_rate, 1, short))
    errors += bad.values()
    return manifest, sorted(errors, key=lambda e: e.line or 0)


def format_manifest(manifest: Manifest) -> str:
    return f"{manifest.root}\n" + "".join(f"{p}\t{n}\n" for p, n in manifest.entries)


@dataclass
class ManifestReport:
    found: int
    written: dict = field(default_factory=dict)  # split -> count
    skipped: List[DataError] = field(default_factory=list)

    def summary(self) -> str:
        parts = ", ".join(f"{split} {n}" for split, n in self.written.items())
        return f"{self.found} audio files found; written: {parts}; skipped: {len(self.skipped)}"


def write_manifests(
    audio_dir: Path,
    dest: Path,
    ext: str = "wav",
    valid_percent: float = 0.0,
    seed: int = 42,
    sample_rate: int = SAMPLE_RATE,
    skip_bad: bool = False,
    split: str = "train",
    header_only: bool = False,
) -> ManifestReport:
    """Write ``dest/<split>.tsv`` (and ``dest/valid.tsv`` when ``valid_percent`` > 0).

    ``split`` names the main manifest: ``train``, or e.g. ``test`` for a folder of held-out audio.
    Files are found recursively and sorted by relative path; the validation split is a seeded
    random sample of ``round(N * valid_percent / 100)`` files, each split written in sorted order.
    Every file is decoded to check it (a FLAC cut short, NaN or infinite samples) unless
    ``header_only``, which reads headers only (those problems then surface in training or
    ``sew infer``, still naming the file). Bad files raise ``DataErrors`` listing every one, unless
    ``skip_bad``, which leaves them out and lists them in ``dest/<split>.skipped_audio.tsv``.
    """
    audio_dir = Path(audio_dir).resolve()
    if not audio_dir.is_dir():
        raise DataError(audio_dir, "audio directory not found")
    if "\n" in str(audio_dir) or "\r" in str(audio_dir):
        raise DataError(audio_dir, "a line break in the directory name would break the manifest's first line")
    suffix = f".{ext.lower()}"  # upper-case .WAV / .FLAC too: none is left behind unnoticed
    found, dangling = files_below(audio_dir, suffix)
    files = [p.relative_to(audio_dir).as_posix() for p in found]
    if not files and not dangling:
        raise DataError(audio_dir, f"no .{ext} files found (searched recursively)")

    report = ManifestReport(found=len(files) + len(dangling))
    report.skipped += [DataError(p, "a link to nothing (its target is gone)") for p in dangling]
    good = []
    for rel in files:
        try:
            if "\t" in rel or "\n" in rel or "\r" in rel:
                raise DataError(audio_dir / rel, "a tab or line break in the file name would break the manifest")
            frames = audio_frames(audio_dir / rel, sample_rate)
            if not header_only:
                decode(audio_dir / rel, frames)
            good.append((rel, frames))
        except DataError as err:
            report.skipped.append(err)
    if report.skipped and not skip_bad:
        raise DataErrors("audio files", report.skipped, "fix them, or pass --skip-bad to leave them out")

    n_valid = round(len(good) * valid_percent / 100)
    if valid_percent > 0 and not 0 < n_valid < len(good):
        raise DataError(audio_dir, f"--valid-percent {valid_percent} of {len(good)} files leaves an empty split")
    order = list(range(len(good)))
    random.Random(seed).shuffle(order)
    valid_ids = set(order[:n_valid])
    if split == "valid" and n_valid:
        raise DataError(audio_dir, "--split valid clashes with the --valid-percent split")
    splits = {split: [e for i, e in enumerate(good) if i not in valid_ids]}
    if n_valid:
        splits["valid"] = [e for i, e in enumerate(good) if i in valid_ids]

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, entries in splits.items():
        (dest / f"{name}.tsv").write_text(format_manifest(Manifest(audio_dir, entries)), encoding="utf-8")
        report.written[name] = len(entries)
    if report.skipped:
        (dest / f"{split}.skipped_audio.tsv").write_text("".join(f"{e.where}\t{e.message}\n" for e in report.skipped))
    assert sum(report.written.values()) + len(report.skipped) == report.found
    return report
