"""Reading and checking audio files: the checks every entry point shares (manifest, labels, infer,
and the training tasks in ``sew_plugin.tasks``).

Two levels: ``audio_frames`` reads only the header (fast; missing, unreadable, other sample rate,
not mono, zero or too short, a WAV cut short), ``read_audio`` / ``check_samples`` decode every
sample as well (a FLAC cut short, NaN or infinite samples).
"""

import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import soundfile as sf

from .errors import DataError

SAMPLE_RATE = 16000

# Samples the wav2vec 2.0 / SEW feature extractor needs for one output frame: its receptive field
# (kernels 10, 3, 3, 3, 3, 2, 2 with strides 5, 2, 2, 2, 2, 2, 2; WFE-C has the same). Shorter
# audio gives no frame at all, so nothing to train on or transcribe.
MIN_SAMPLES = 400


def _wav_shortfall(path: Path) -> Optional[Tuple[int, int]]:
    """``(declared, present)`` bytes of a RIFF/WAVE file's ``data`` chunk when the file ends before
    the chunk does (a copy or download cut short); None when complete or not a RIFF/WAVE file.

    libsndfile reads such a file without complaint and reports only the samples present, so a
    truncated WAV would otherwise pass as a shorter utterance. Sizes 0 and 0xFFFFFFFF are the
    placeholders of streamed WAVs, not truncation.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size = os.fstat(f.fileno()).st_size
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            length = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                present = size - pos - 8
                if present < length and length not in (0, 0xFFFFFFFF):
                    return length, present
                return None
            pos += 8 + length + (length & 1)
    return None


def audio_frames(path: Path, sample_rate: int = SAMPLE_RATE, min_samples: int = MIN_SAMPLES) -> int:
    """Number of samples of a mono file at ``sample_rate``, read from the header.

    Raises ``DataError`` naming the file for: missing, unreadable, other sample rate, more than
    one channel, zero length, fewer than ``min_samples`` samples (the feature extractor's
    receptive field), a WAV whose data chunk is cut short.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a directory, expected an audio file")
    if not path.is_file():
        raise DataError(path, "audio file not found")
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises several types for corrupt headers
        raise DataError(path, f"unreadable audio ({err})") from None
    if info.samplerate != sample_rate:
        raise DataError(path, f"sample rate {info.samplerate} Hz, expected {sample_rate} Hz (resample first)")
    if info.channels != 1:
        raise DataError(path, f"{info.channels} channels, expected mono")
    if info.frames <= 0:
        raise DataError(path, "zero-length audio")
    if info.frames < min_samples:
        raise DataError(path, f"only {info.frames} samples, shorter than the feature extractor's receptive field "
                        f"({min_samples} samples): it gives no output frame")
    shortfall = _wav_shortfall(path)
    if shortfall is not None:
        raise DataError(path, f"truncated: the WAV header declares {shortfall[0]} bytes of samples, "
                        f"the file holds {shortfall[1]}")
    return info.frames


def check_samples(path: Path, wav, frames: int):
    """``wav`` (a NumPy array or tensor) as decoded from ``path``, refused when it holds other than the
    ``frames`` samples its header or manifest row promise, or samples that are not finite."""
    if len(wav) != frames:
        raise DataError(path, f"truncated: {len(wav)} of the {frames} samples could be read")
    finite = np.isfinite(wav)
    if not finite.all():
        first = int(np.argmin(finite))
        raise DataError(path, f"contains NaN or infinite samples ({int((~finite).sum())} of them, the first at "
                        f"sample {first})")
    return wav


def decode(path: Path, frames: int) -> np.ndarray:
    """Every sample of ``path`` as float32, checked (``check_samples``)."""
    try:
        wav, _ = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as err:
        raise DataError(path, f"unreadable audio, truncated or corrupt ({err})") from None
    return check_samples(path, wav, frames)


def read_audio(path: Path, expected_frames: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The samples of a mono file as float32, checked against the manifest's sample count."""
    frames = audio_frames(path, sample_rate)
    if frames != expected_frames:
        raise DataError(path, f"has {frames} samples but the manifest says {expected_frames}")
    return decode(path, frames)
