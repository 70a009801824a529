"""fairseq audio manifests: the first line is the audio root, then ``relative/path<TAB>num_samples``.

``write_manifests`` replaces fairseq's ``examples/wav2vec/wav2vec_manifest.py`` (not in the wheel),
with checked audio and a deterministic order and split.
"""

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple

from .audio import SAMPLE_RATE, audio_frames
from .errors import DataError, DataErrors


@dataclass
class Manifest:
    root: Path
    entries: List[Tuple[str, int]]  # (path relative to root, number of samples)
    path: Path = None

    def audio_path(self, index: int) -> Path:
        return self.root / self.entries[index][0]


def read_manifest(path: Path) -> Manifest:
    """Parse a manifest, raising ``DataError`` with the file and line for malformed rows."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "manifest not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].strip():
        raise DataError(path, "empty manifest: the first line must be the audio root directory", 1)
    entries = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            raise DataError(path, "empty line", number)
        cols = line.split("\t")
        if len(cols) != 2:
            raise DataError(path, f"expected 'relative/path<TAB>num_samples', got {len(cols)} column(s)", number)
        try:
            frames = int(cols[1])
        except ValueError:
            raise DataError(path, f"number of samples {cols[1]!r} is not an integer", number) from None
        if frames <= 0:
            raise DataError(path, f"number of samples must be positive, got {frames}", number)
        entries.append((cols[0], frames))
    return Manifest(Path(lines[0].strip()), entries, path)


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
) -> ManifestReport:
    """Write ``dest/<split>.tsv`` (and ``dest/valid.tsv`` when ``valid_percent`` > 0).

    ``split`` names the main manifest: ``train``, or e.g. ``test`` for a folder of held-out audio.
    Files are found recursively and sorted by relative path; the validation split is a seeded
    random sample of ``round(N * valid_percent / 100)`` files, each split written in sorted order.
    Bad files raise ``DataErrors`` listing every one, unless ``skip_bad``, which leaves them out and
    lists them in ``dest/<split>.skipped_audio.tsv``.
    """
    audio_dir = Path(audio_dir).resolve()
    if not audio_dir.is_dir():
        raise DataError(audio_dir, "audio directory not found")
    files = sorted(p.relative_to(audio_dir).as_posix() for p in audio_dir.rglob(f"*.{ext}") if p.is_file())
    if not files:
        raise DataError(audio_dir, f"no .{ext} files found (searched recursively)")

    report = ManifestReport(found=len(files))
    good = []
    for rel in files:
        try:
            good.append((rel, audio_frames(audio_dir / rel, sample_rate)))
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
    for split, entries in splits.items():
        (dest / f"{split}.tsv").write_text(format_manifest(Manifest(audio_dir, entries)), encoding="utf-8")
        report.written[split] = len(entries)
    if report.skipped:
        (dest / f"{split}.skipped_audio.tsv").write_text("".join(f"{e.where}\t{e.message}\n" for e in report.skipped))
    assert sum(report.written.values()) + len(report.skipped) == report.found
    return report
