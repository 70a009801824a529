"""fairseq audio manifests: the first line is the audio root, then ``relative/path<TAB>num_samples``.

``write_manifests`` does what fairseq's ``examples/wav2vec/wav2vec_manifest.py`` does (the same
files, through links to folders; ``--valid-percent`` the same fraction), with checked audio and file
names, a deterministic order and split, and no earlier run's files left beside the new ones.
"""

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from .audio import MIN_SAMPLES, SAMPLE_RATE, audio_frames, decode
from .errors import DataError, check_fraction, output_dir, printable, read_lines, refuse_bad, refuse_existing


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


class Found(NamedTuple):
    files: List[Path]  # sorted
    dangling: List[Path]  # links to nothing, named like the files
    hidden: List[Path]  # hidden files so named and hidden folders, left out as fairseq's glob leaves them


def files_below(root: Path, suffix: str) -> Found:
    """The files under ``root`` whose name ends in ``suffix`` (any case), as fairseq's ``glob`` finds
    them: through links to folders (each real folder once, so a link cycle ends; ``Path.rglob`` on
    Python 3.11 follows none), and without names that begin with a dot (macOS's ``._`` copies,
    ``.Trash``), which are listed apart, as are links that point to nothing."""
    found, dangling, hidden, seen = [], [], [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        hidden += [Path(folder) / d for d in subfolders if d.startswith(".")]
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in names:
            if name.lower().endswith(suffix):
                path = Path(folder) / name
                (hidden if name.startswith(".") else found if path.is_file() else dangling).append(path)
    return Found(sorted(found), sorted(dangling), sorted(hidden))


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
    hidden: int = 0  # hidden files and folders, left out as fairseq's glob leaves them

    def summary(self) -> str:
        parts = ", ".join(f"{split} {n}" for split, n in self.written.items())
        removed = f"; removed, from an earlier run: {', '.join(p.name for p in self.removed)}" if self.removed else ""
        hidden = f"; {self.hidden} hidden files or folders left out, as fairseq's glob" if self.hidden else ""
        return f"{self.found} audio files found; written: {parts}; skipped: {len(self.skipped)}{hidden}{removed}"


def check_split_name(split: str) -> str:
    """A split names files in one folder (``<split>.tsv``, ``<split>.ltr``) and is listed in
    fairseq's comma-separated ``dataset.valid_subset``: a plain, visible name without a comma."""
    if not split or split != split.strip() or split.startswith(".") or split.endswith(".tsv") \
            or any(c in split for c in "/\\,") or not split.isprintable():
        raise ValueError(f"--split {printable(repr(split))}: expected a plain name such as train, valid or test "
                         f"(no folder, comma, .tsv, leading dot or blank)")
    return split


# what ``sew labels`` writes beside a manifest <split>.tsv, and the list of what it left out
LABEL_OUTPUTS = (".wrd", ".ltr", ".skipped.tsv")


def manifest_outputs(dest: Path, split: str) -> List[Path]:
    """The files of ``dest`` that belong to the manifest of ``split``: the manifest, the list of
    files it left out, and the label files ``sew labels`` wrote for it. A new manifest makes an
    earlier run's label files stale: one of the old rows can still have the new row count."""
    return [dest / f"{split}{suffix}" for suffix in (".tsv", ".skipped_audio.tsv", *LABEL_OUTPUTS)]


def _drawn_together(dest: Path, split: str) -> bool:
    """Whether ``dest/valid.tsv`` was split off the same folder as ``dest/<split>.tsv`` (both list
    one audio root): rewriting that split without a new valid split would leave it overlapping."""
    try:
        return all((dest / f"{s}.tsv").is_file() for s in (split, "valid")) and \
            read_manifest(dest / f"{split}.tsv").root == read_manifest(dest / "valid.tsv").root
    except DataError:  # a manifest that is not ours is not compared
        return False


def _bad_name(rel: str) -> Optional[str]:
    """Why fairseq would not read the file at ``rel`` (relative to the manifest's root), or None."""
    if any(c in rel for c in "\t\n\r"):
        return "a tab or line break in the file name would break the manifest"
    if rel != rel.lstrip():
        return "the path begins with a blank, which fairseq strips from each manifest line (rename the file)"
    if not is_utf8(rel):
        return "the file name is not UTF-8, and fairseq reads manifests as UTF-8 (rename the file)"
    return None


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # a file name's undecodable bytes, kept as surrogates by os.fsdecode
        return False


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
    Files are found recursively (``files_below``) and sorted by relative path; the validation split
    is a seeded random sample of ``round(N * valid_fraction)`` files, each split written in sorted
    order. Every file is decoded to check it (a FLAC cut short, NaN or infinite samples) unless
    ``header_only``, which reads headers only (those problems then surface in training or
    ``sew infer``, still naming the file). Bad files raise ``DataErrors`` listing every one, unless
    ``skip_bad``, which leaves them out and lists them in ``dest/<split>.skipped_audio.tsv``.
    Files of an earlier run for this split (``manifest_outputs``; those of ``valid`` too when this
    run writes one, or when the earlier valid split was drawn with this split) are refused before
    any audio is read, or with ``overwrite`` replaced: the ones not written again are removed, so
    none is left to be read with the new manifests.
    """
    check_split_name(split)
    check_fraction(valid_fraction)
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
    if not is_utf8(str(audio_dir)):
        raise DataError(audio_dir, "the directory name is not UTF-8, and fairseq reads manifests as UTF-8: rename it")
    dest = output_dir(dest)
    replaced = manifest_outputs(dest, split)
    if split != "valid" and (valid_fraction > 0 or _drawn_together(dest, split)):
        replaced += manifest_outputs(dest, "valid")
    stale = refuse_existing(replaced, overwrite, " (an earlier run's manifests and labels would be read with the new ones)")
    suffix = f".{ext.lower()}"  # upper-case .WAV / .FLAC too: none is left behind unnoticed
    found, dangling, hidden = files_below(audio_dir, suffix)
    files = [p.relative_to(audio_dir).as_posix() for p in found]
    if not files and not dangling:
        raise DataError(audio_dir, f"no .{ext} files found (searched recursively)")

    report = ManifestReport(found=len(files) + len(dangling), hidden=len(hidden))
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
    refuse_bad("audio files", report.skipped, skip_bad, bool(good))

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
