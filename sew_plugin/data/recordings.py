"""Recordings as people have them, for ``sew transcribe``: any file libsndfile decodes (WAV, FLAC,
OGG/Vorbis, Opus, MP3, AIFF, ...), at any sample rate, mono or not, made the model's 16 kHz mono.

Unlike a training manifest, nothing here is refused for its rate or channel count: several
channels are averaged (mixed down) and other rates are resampled with soxr, the resampler of the
field (its "HQ" quality: a passband to 0.91 of Nyquist, 20-bit stop-band rejection). What cannot
make audio is refused by name: unreadable or corrupt, cut short (a WAV, AIFF, CAF, AU or NIST file
that ends before the samples its header declares), empty, or holding NaN or infinite samples.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

from .audio import SAMPLE_RATE, check_complete, check_samples
from .errors import DataError, DataErrors
from .manifest import files_below

# the extensions a folder is searched for: the containers libsndfile reads that hold recordings
EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".snd",
              ".w64", ".rf64", ".caf", ".sph", ".nist")


@dataclass
class Recording:
    """One file made the model's input: ``samples`` (S,) float32 at 16 kHz, mono."""

    path: Path
    samples: np.ndarray
    sample_rate: int  # the file's own rate
    channels: int  # the file's own channels

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


class Search(NamedTuple):
    """What ``find_recordings`` found, and what it left out."""

    found: List[Path]  # the files to transcribe, each once, in a fixed order
    again: List[Tuple[Path, Path]]  # (path, the same file's first path) of each file found again
    hidden: List[Path]  # hidden recordings and folders of searched folders
    other: List[Path]  # searched folders' files without an audio extension (EXTENSIONS)


def find_recordings(sources: Sequence[Path]) -> Search:
    """The files to transcribe, in a fixed order (each source in turn, a folder's files sorted by
    path and found through links to folders), each once; the (path, the same file's first path)
    of each file found again (given twice, or through a link); the hidden recordings and
    folders left out of searched folders (names that begin with a dot, as fairseq's glob leaves
    them: macOS's ``._`` copies, ``.Trash``), but for those given as sources or holding one; and
    the searched folders' other files, left out for their extension (``.m4a``, ``.txt``). A link
    to nothing is kept: reading it names it. A source that does not exist, or a folder without
    recordings, raises ``DataErrors``."""
    found, problems, seen, again, hidden, other = [], [], {}, [], {}, []
    for source in map(Path, sources):
        if source.is_dir():
            below = files_below(source, "")  # one walk of the folder: every name ends with ""
            # a link to nothing is kept: it is named when it is read
            files = [path for path in below.files + below.dangling if path.name.lower().endswith(EXTENSIONS)]
            other += [path for path in below.files if not path.name.lower().endswith(EXTENSIONS)]
            for ext in EXTENSIONS:  # hidden folders and recordings, listed extension by extension
                hidden.update(dict.fromkeys(p for p in below.hidden if p.is_dir() or p.name.lower().endswith(ext)))
            if not files:
                problems.append(DataError(source, f"no recordings in this folder ({', '.join(EXTENSIONS)})"))
        elif source.is_file():
            files = [source]
        else:
            problems.append(DataError(source, "not found"))
            continue
        for path in sorted(files):
            key = os.path.realpath(path)
            if key in seen:
                again.append((path, seen[key]))
            else:
                seen[key] = path
                found.append(path)
    if problems:
        raise DataErrors("inputs", problems)
    given = [Path(os.path.realpath(source)) for source in sources]
    return Search(found, again, [path for path in hidden if not _given_or_holds_one(path, given)],
                  sorted(dict.fromkeys(other)))


def _given_or_holds_one(path: Path, given: List[Path]) -> bool:
    """Whether ``path`` is one of the ``given`` real paths, or a folder that holds one."""
    real = Path(os.path.realpath(path))
    return any(g == real or real in g.parents for g in given)


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """(S, C) or (S,) float32 at ``rate`` -> the same at ``target``, with soxr (HQ)."""
    if rate == target:
        return samples
    import soxr

    return soxr.resample(samples, rate, target, quality="HQ").astype(np.float32, copy=False)


def make_recording(samples, rate: int, path: Optional[Path] = None) -> Recording:
    """A ``Recording`` of (S,) or (S, C) ``samples`` at ``rate``: floats, or integer PCM scaled by its
    type's range (int16 -32768 -> -1.0). Refused (``DataError`` naming ``path``, or "the samples"):
    another shape, no samples, NaN or infinite values."""
    where = path or "the samples"
    wav = np.asarray(samples)
    if wav.dtype.kind in "iu":
        info = np.iinfo(wav.dtype)
        middle = (int(info.max) + int(info.min) + 1) / 2  # 0 for signed PCM, 128 for unsigned 8-bit
        wav = (wav.astype(np.float64) - middle) / (info.max - middle + 1)
    elif wav.dtype.kind != "f":
        raise DataError(where, f"samples of type {wav.dtype}: expected floating-point or integer PCM")
    wav = wav.astype(np.float32, copy=False)
    if wav.ndim == 1:
        wav = wav[:, None]
    if wav.ndim == 2 and wav.shape[0] == 0:
        raise DataError(where, "holds no audio (zero samples)")
    if wav.ndim != 2 or wav.shape[0] < wav.shape[1]:
        raise DataError(where, f"shape {tuple(np.shape(samples))}: expected (samples,) or (samples, channels)")
    check_samples(where, wav, wav.shape[0])
    mono = wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]
    return Recording(path, np.ascontiguousarray(resample(mono, rate)), rate, wav.shape[1])


def load_recording(path: Path) -> Recording:
    """Every sample of ``path``, mixed down to mono and resampled to 16 kHz (see the module's
    docstring); ``DataError`` naming the file when it gives no usable audio."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a folder: give it to sew transcribe, which searches it")
    if not path.is_file():
        raise DataError(path, "not found (a link to nothing?)" if path.is_symlink() else "not found")
    try:
        check_complete(path)  # libsndfile reads a file cut short as a shorter recording
        wav, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except OSError as err:
        raise DataError(path, f"cannot be read ({err})") from None
    except DataError:
        raise
    except Exception as err:  # soundfile raises several types for corrupt or unknown files
        raise DataError(path, f"cannot be decoded ({err})") from None
    return make_recording(wav, rate, path)
