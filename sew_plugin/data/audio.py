"""Reading and checking audio files: the checks every entry point shares (manifest, labels, infer)."""

from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import DataError

SAMPLE_RATE = 16000


def audio_frames(path: Path, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of samples of a mono file at ``sample_rate``, read from the header.

    Raises ``DataError`` naming the file for: missing, unreadable, other sample rate, more than
    one channel, zero length.
    """
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
    return info.frames


def read_audio(path: Path, expected_frames: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The samples of a mono file as float32, checked against the manifest's sample count."""
    frames = audio_frames(path, sample_rate)
    if frames != expected_frames:
        raise DataError(path, f"has {frames} samples but the manifest says {expected_frames}")
    try:
        wav, _ = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as err:
        raise DataError(path, f"unreadable audio ({err})") from None
    if len(wav) != frames:
        raise DataError(path, f"truncated: header says {frames} samples, {len(wav)} could be read")
    if not np.isfinite(wav).all():
        raise DataError(path, "contains NaN or infinite samples")
    return wav
