"""fairseq audio manifests: the first line is the audio root, then ``relative/path<TAB>num_samples``.

``write_manifests`` does what fairseq's ``examples/wav2vec/wav2vec_manifest.py`` does (the same
files, through links to folders; ``--valid-percent`` the same fraction), with checked audio and file
names, a deterministic order and split, and no earlier run's files left beside the new ones.
"""

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .audio import MIN_SAMPLES, SAMPLE_RATE, audio_frames, decode
from .errors import DataError, DataErrors, output_dir, printable, read_lines, refuse_existing


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
    if cols[0] != cols[0].lstrip():
        raise ValueError(f"the path {cols[0]!r} begins with a blank, which fairseq strips (it would read "
                         f"{cols[0].lstrip()!r})")
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
    lines = read_lines(path, "manifest", fairseq_reads=True)
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
    removed: List[Path] = field(default_factory=list)  # an earlier run's files, stale beside the new ones

    def summary(self) -> str:
        parts = ", ".join(f"{split} {n}" for split, n in self.written.items())
        removed = f"; removed, from an earlier run: {', '.join(p.name for p in self.removed)}" if self.removed else ""
        return f"{self.found} audio files found; written: {parts}; skipped: {len(self.skipped)}{removed}"


def check_split_name(split: str) -> str:
    """A split names files in one folder (``<split>.tsv``, ``<split>.ltr``): a plain, visible name."""
    if not split or split != split.strip() or split.startswith(".") or any(c in split for c in "/\\") \
            or not split.isprintable():
        raise ValueError(f"--split {printable(repr(split))}: expected a plain file name such as train, valid or "
                         f"test (no folder, no leading dot or blank)")
    return split


def manifest_outputs(dest: Path, splits: Sequence[str]) -> List[Path]:
    """Every file of ``dest`` that belongs to a manifest of ``splits``: the manifest, the label files
    ``sew labels`` writes for it, and the lists of what either left out. A new manifest makes an
    earlier run's copies stale (a label file of the old rows still has the new row count)."""
    names = [f"{s}{suffix}" for s in splits
             for suffix in (".tsv", ".skipped_audio.tsv", ".wrd", ".ltr", ".unfiltered.tsv", ".skipped.tsv")]
    return [dest / n for n in names]


def _valid_outputs(dest: Path, found: List[Path], writing_valid: bool) -> List[Path]:
    """The files of ``dest``'s valid split this run replaces: all of them when it writes a valid
    split, else those of a ``valid.tsv`` listing any of the ``found`` files (an earlier split of
    this folder, which would overlap the new manifest); none for another folder's valid split."""
    old = dest / "valid.tsv"
    if not writing_valid:
        try:
            listed = read_manifest(old) if old.is_file() else None
        except DataError:  # not a manifest of ours: nothing to compare
            listed = None
        if listed is None or not {os.path.normpath(listed.root / rel) for rel, _ in listed.entries} \
                & {os.path.normpath(p) for p in found}:
            return []
    return manifest_outputs(dest, ["valid"])


def _bad_name(rel: str) -> Optional[str]:
    """Why fairseq would not read the file at ``rel`` (relative to the manifest's root), or None."""
    if any(c in rel for c in "\t\n\r"):
        return "a tab or line break in the file name would break the manifest"
    if rel != rel.lstrip():
        return "the path begins with a blank, which fairseq strips from each manifest line (rename the file)"
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not UTF-8, and fairseq reads manifests as UTF-8 (rename the file)"
    return None


def write_manifests(
    audio_dir: Path,
    dest: Path,
    ext: str = "wav",
    valid_fraction: float = 0.0,
    seed: int = 42,
    sample_rate: int = SAMPLE_RATE,
    skip_bad: bool = False,
    split: str = "train",
    header_only: bool = False,
    overwrite: bool = False,
) -> ManifestReport:
    """Write ``dest/<split>.tsv`` (and ``dest/valid.tsv`` when ``valid_fraction`` > 0).

    ``split`` names the main manifest: ``train``, or e.g. ``test`` for a folder of held-out audio.
    Files are found recursively (through links to folders) and sorted by relative path; the
    validation split is a seeded random sample of ``round(N * valid_fraction)`` files, each split
    written in sorted order. Every file is decoded to check it (a FLAC cut short, NaN or infinite
    samples) unless ``header_only``, which reads headers only (those problems then surface in
    training or ``sew infer``, still naming the file). Bad files raise ``DataErrors`` listing every
    one, unless ``skip_bad``, which leaves them out and lists them in ``dest/<split>.skipped_audio.tsv``.
    Files of an earlier run for ``split`` and ``valid`` in ``dest`` (``manifest_outputs``) are
    refused before any audio is read, or with ``overwrite`` replaced: the ones not written again
    are removed, so none is left to be read with the new manifests.
    """
    check_split_name(split)
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"--valid-percent {valid_fraction}: a fraction in [0, 1), as in fairseq "
                         f"(0.01 is 1% of the files)")
    if split == "valid" and valid_fraction:
        raise ValueError("--split valid clashes with the --valid-percent split")
    audio_dir = Path(audio_dir).resolve()
    if not audio_dir.is_dir():
        raise DataError(audio_dir, "audio directory not found")
    if "\n" in str(audio_dir) or "\r" in str(audio_dir):
        raise DataError(audio_dir, "a line break in the directory name would break the manifest's first line")
    if str(audio_dir) != str(audio_dir).strip():
        raise DataError(audio_dir, "the directory name ends in a blank, which fairseq strips from the manifest's "
                        "first line (it would read another folder): rename it")
    dest = output_dir(dest)
    suffix = f".{ext.lower()}"  # upper-case .WAV / .FLAC too: none is left behind unnoticed
    found, dangling = files_below(audio_dir, suffix)
    files = [p.relative_to(audio_dir).as_posix() for p in found]
    if not files and not dangling:
        raise DataError(audio_dir, f"no .{ext} files found (searched recursively)")
    replaced = manifest_outputs(dest, [split]) + _valid_outputs(dest, found, valid_fraction > 0)
    stale = refuse_existing(replaced, overwrite, " (an earlier run's manifests and labels would be read with the new ones)")

    report = ManifestReport(found=len(files) + len(dangling))
    report.skipped += [DataError(p, "a link to nothing (its target is gone)") for p in dangling]
    good = []
    for rel in files:
        try:
            why = _bad_name(rel)
            if why:
                raise DataError(audio_dir / rel, why)
            frames = audio_frames(audio_dir / rel, sample_rate)
            if not header_only:
                decode(audio_dir / rel, frames)
            good.append((rel, frames))
        except DataError as err:
            report.skipped.append(err)
    if report.skipped and (not skip_bad or not good):
        hint = "none is left to write: fix them" if skip_bad else "fix them, or pass --skip-bad to leave them out"
        raise DataErrors("audio files", report.skipped, hint)

    n_valid = round(len(good) * valid_fraction)
    if valid_fraction > 0 and not 0 < n_valid < len(good):
        raise DataError(audio_dir, f"--valid-percent {valid_fraction} of {len(good)} files leaves an empty split")
    order = list(range(len(good)))
    random.Random(seed).shuffle(order)
    valid_ids = set(order[:n_valid])
    splits = {split: [e for i, e in enumerate(good) if i not in valid_ids]}
    if n_valid:
        splits["valid"] = [e for i, e in enumerate(good) if i in valid_ids]

    written = []
    for name, entries in splits.items():
        written.append(dest / f"{name}.tsv")
        written[-1].write_text(format_manifest(Manifest(audio_dir, entries)), encoding="utf-8")
        report.written[name] = len(entries)
    if report.skipped:
        written.append(dest / f"{split}.skipped_audio.tsv")
        written[-1].write_text("".join(f"{e.where}\t{e.message}\n" for e in report.skipped), encoding="utf-8")
    for path in set(stale) - set(written):
        path.unlink()
    report.removed = sorted(set(stale) - set(written))
    assert sum(report.written.values()) + len(report.skipped) == report.found
    return report
