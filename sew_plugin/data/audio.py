"""Reading and checking audio files: the checks every entry point shares (manifest, labels, infer,
and the training tasks in ``sew_plugin.tasks``).

Two levels: ``audio_frames`` reads only the header (fast; missing, unreadable, other sample rate,
not mono, zero or too short, a WAV, RF64, W64, AIFF, CAF, NIST or AU file cut short), ``read_audio`` /
``check_samples`` decode every sample as well (a FLAC cut short, NaN or infinite samples).
"""

import os
import re
from functools import partial
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


# Sony Wave64 chunk ids: GUIDs, as stored (the first three fields little-endian).
_W64_RIFF = bytes.fromhex("726966662e91cf11a5d628db04c10000")  # 66666972-912E-11CF-A5D6-28DB04C10000
_W64_WAVE = bytes.fromhex("77617665f3acd3118cd100c04f8edb8a")  # 65766177-ACF3-11D3-8CD1-00C04F8EDB8A
_W64_DATA = bytes.fromhex("64617461f3acd3118cd100c04f8edb8a")  # 61746164-ACF3-11D3-8CD1-00C04F8EDB8A
# The 32-bit size a stream writer leaves (RF64: the size is in ds64). The other placeholder, 0,
# never exceeds the bytes present.
_UNKNOWN = 0xFFFFFFFF
# A WAV's data sizes that say the same: ffmpeg's and RF64's above, sox's to a pipe, arecord's.
# libsndfile reads such a file to its end.
_RIFF_UNKNOWN = (_UNKNOWN, 0x7FFFF000, 0x7FFFFFFF)


def _chunks(f, pos: int, end: int, id_size=4, size_size=4, order="little", size_has_header=False, align=2):
    """``(id, offset of its body, size of its body)`` of each chunk from ``pos`` on."""
    head_size = id_size + size_size
    while pos + head_size <= end:
        f.seek(pos)
        head = f.read(head_size)
        length = int.from_bytes(head[id_size:], order) - (head_size if size_has_header else 0)
        if length < 0:
            return
        yield head[:id_size], pos + head_size, length
        pos += head_size + length + (-length % align)


def _riff(f, size: int, order="little"):
    """RIFF/WAVE, RIFX (big-endian) and RF64 (the 64-bit sizes in ``ds64``)."""
    ds64_data = None
    for chunk, start, length in _chunks(f, 12, size, order=order):
        if chunk == b"ds64":
            f.seek(start + 8)
            ds64_data = int.from_bytes(f.read(8), "little")
        elif chunk == b"data":
            if length in _RIFF_UNKNOWN:
                length = ds64_data  # None outside RF64: the size is not known, the file is read to its end
            return None if length is None else (length, size - start)
    return None


def _w64(f, size: int):
    """Sony Wave64: 16-byte GUID ids, 64-bit sizes that count the 24-byte chunk header."""
    for chunk, start, length in _chunks(f, 40, size, id_size=16, size_size=8, size_has_header=True, align=8):
        if chunk == _W64_DATA:
            return length, size - start
    return None


def _iff(f, size: int, body: bytes, skip: int):
    """AIFF, AIFF-C and SVX: big-endian chunks in a FORM; the samples ``skip`` bytes into ``body``."""
    for chunk, start, length in _chunks(f, 12, size, order="big"):
        if chunk == body:
            return length - skip, size - start - skip
    return None


def _caf(f, size: int):
    """CAF: big-endian chunks with 64-bit sizes; ``data`` starts with a 4-byte edit count, size -1 is
    "up to the end"."""
    for chunk, start, length in _chunks(f, 8, size, size_size=8, order="big", align=1):
        if chunk == b"data":
            return None if length == 2**64 - 1 else (length - 4, size - start - 4)
    return None


def _au(f, size: int, order: str):
    """Sun AU: the samples from the offset at byte 4 to the end, their size at byte 8."""
    f.seek(4)
    offset, length = int.from_bytes(f.read(4), order), int.from_bytes(f.read(4), order)
    return None if length == _UNKNOWN else (length, size - offset)


def _nist(f, size: int):
    """NIST SPHERE: a text header of ``name -type value`` lines, its size on the second line."""
    f.seek(0)
    match = re.match(rb"NIST_1A\s+(\d+)\s", f.read(32))
    if match is None:
        return None
    header_size = int(match[1])
    f.seek(0)
    # numbers only; libsndfile writes sample_n_bytes as text (-s1) for u-law and A-law
    fields = {name: int(value) for name, value in
              re.findall(rb"^(\w+) -(?:i|s\d+) (\d+)\s*$", f.read(header_size), re.M)}
    if b"sample_count" not in fields or b"sample_n_bytes" not in fields:
        return None
    length = fields[b"sample_count"] * fields[b"sample_n_bytes"] * fields.get(b"channel_count", 1)
    return length, size - header_size


# (container, pattern its first 40 bytes match, parser(file, size) -> (declared, present) or None)
_CONTAINERS = [
    ("WAV", rb"RIFF.{4}WAVE", _riff),
    ("RIFX", rb"RIFX.{4}WAVE", partial(_riff, order="big")),
    ("RF64", rb"RF64.{4}WAVE", _riff),
    ("W64", re.escape(_W64_RIFF) + rb".{8}" + re.escape(_W64_WAVE), _w64),
    ("AIFF", rb"FORM.{4}AIFF", partial(_iff, body=b"SSND", skip=8)),
    ("AIFF-C", rb"FORM.{4}AIFC", partial(_iff, body=b"SSND", skip=8)),
    ("SVX", rb"FORM.{4}(8SVX|16SV)", partial(_iff, body=b"BODY", skip=0)),
    ("CAF", rb"caff", _caf),
    ("AU", rb"\.snd", partial(_au, order="big")),
    ("AU", rb"dns\.", partial(_au, order="little")),
    ("NIST", rb"NIST_1A\s", _nist),
]


def _declared_shortfall(path: Path) -> Optional[Tuple[str, int, int]]:
    """``(container, declared, present)`` bytes of samples when the file ends before the samples its
    header declares (a copy or download cut short); None when complete or the header declares no size.

    libsndfile reads such a file without complaint and reports only the samples present, so it would
    otherwise pass as a shorter utterance. The container is recognised by content, never by name.
    """
    with open(path, "rb") as f:
        head = f.read(40)
        size = os.fstat(f.fileno()).st_size
        for container, pattern, parse in _CONTAINERS:
            if re.match(pattern, head, re.S):
                found = parse(f, size)
                if found is not None and found[1] < found[0]:
                    return (container, *found)
                return None
    return None


def audio_frames(path: Path, sample_rate: int = SAMPLE_RATE, min_samples: int = MIN_SAMPLES) -> int:
    """Number of samples of a mono file at ``sample_rate``, read from the header.

    Raises ``DataError`` naming the file for: missing, unreadable, other sample rate, more than
    one channel, zero length, fewer than ``min_samples`` samples (the feature extractor's
    receptive field), a file that ends before the samples its header declares.
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
    check_complete(path)
    return info.frames


def check_complete(path: Path) -> None:
    """Refuse (``DataError`` naming the file) a file that ends before the samples its header
    declares, which libsndfile would read as a shorter recording without a word."""
    shortfall = _declared_shortfall(path)
    if shortfall is not None:
        container, declared, present = shortfall
        raise DataError(path, f"truncated: the {container} header declares {declared} bytes of samples, "
                        f"the file holds {present}")


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
