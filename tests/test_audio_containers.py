"""Audio files cut short, in every container whose header declares the size of its samples (issue 20).

libsndfile reads a truncated RF64, W64, AIFF, CAF, NIST or AU file without complaint and reports only
the samples present, so a copy cut short would pass as a shorter utterance. ``audio_frames`` compares the
size the header declares with the bytes the file holds, recognising the container by its content,
whatever the file is called. Real files throughout, written with soundfile and cut to 2/3 of their bytes.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sew_plugin.data.audio import audio_frames
from sew_plugin.data.recordings import load_recording
from sew_plugin.data.errors import DataError

SEW = str(Path(sys.executable).with_name("sew"))
FRAMES = 43433

# (soundfile format, subtype, endian, usual extension, container named in the error)
CONTAINERS = [
    ("WAV", "PCM_16", "FILE", "wav", "WAV"),
    ("WAV", "FLOAT", "FILE", "wav", "WAV"),
    ("WAVEX", "PCM_24", "FILE", "wav", "WAV"),
    ("WAV", "PCM_16", "BIG", "wav", "RIFX"),
    ("RF64", "PCM_16", "FILE", "rf64", "RF64"),
    ("RF64", "PCM_24", "FILE", "rf64", "RF64"),
    ("RF64", "FLOAT", "FILE", "rf64", "RF64"),
    ("W64", "PCM_16", "FILE", "w64", "W64"),
    ("W64", "PCM_24", "FILE", "w64", "W64"),
    ("W64", "FLOAT", "FILE", "w64", "W64"),
    ("AIFF", "PCM_16", "FILE", "aiff", "AIFF"),
    ("AIFF", "PCM_24", "FILE", "aiff", "AIFF"),
    ("AIFF", "FLOAT", "FILE", "aifc", "AIFF-C"),
    ("AIFF", "PCM_16", "LITTLE", "aifc", "AIFF-C"),
    ("NIST", "PCM_16", "FILE", "sph", "NIST"),
    ("NIST", "PCM_24", "FILE", "sph", "NIST"),
    ("NIST", "ULAW", "FILE", "sph", "NIST"),  # sample_n_bytes written as text, -s1
    ("AU", "PCM_16", "FILE", "au", "AU"),
    ("AU", "FLOAT", "FILE", "au", "AU"),
    ("AU", "PCM_16", "LITTLE", "au", "AU"),
    ("SVX", "PCM_16", "FILE", "iff", "SVX"),
    ("CAF", "PCM_16", "FILE", "caf", "CAF"),
    ("CAF", "FLOAT", "FILE", "caf", "CAF"),
]
# Bytes kept of a file cut short. libsndfile itself refuses a CAF cut by more than a few percent.
KEEP = {"CAF": 0.99}


def _write(path: Path, fmt: str, subtype: str, endian: str = "FILE") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = (0.1 * np.random.default_rng(0).standard_normal(FRAMES)).astype(np.float32)
    sf.write(path, samples, 16000, format=fmt, subtype=subtype, endian=endian)
    return path


def _cut(path: Path, keep=2 / 3) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("named", ["usual", "wav"])
@pytest.mark.parametrize("fmt, subtype, endian, ext, container", CONTAINERS,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CONTAINERS])
def test_a_file_cut_short_is_refused_and_the_whole_one_passes(tmp_path, fmt, subtype, endian, ext, container,
                                                              named):
    name = f"utt.{ext if named == 'usual' else 'wav'}"
    whole = _write(tmp_path / "whole" / name, fmt, subtype, endian)
    assert audio_frames(whole) == FRAMES

    cut = _cut(_write(tmp_path / "cut" / name, fmt, subtype, endian), KEEP.get(fmt, 2 / 3))
    assert 0 < sf.info(str(cut)).frames < FRAMES  # libsndfile alone takes it for a shorter utterance
    with pytest.raises(DataError) as info:
        audio_frames(cut)
    message = str(info.value)
    assert str(cut) in message and "truncated" in message, message
    assert f"the {container} header declares" in message, message


@pytest.mark.parametrize("fmt, offset, order, size", [("WAV", 40, "little", 0xFFFFFFFF), ("AU", 8, "big", 0xFFFFFFFF),
                                                      ("WAV", 40, "little", 0x7FFFF000), ("WAV", 40, "little", 0x7FFFFFFF)])
def test_an_unknown_data_size_is_not_truncation(tmp_path, fmt, offset, order, size):
    """The placeholders of a file written as a stream (ffmpeg's 0xFFFFFFFF, sox's 0x7FFFF000 to a
    pipe, arecord's 0x7FFFFFFF); libsndfile reads to the end, and so does sew transcribe."""
    path = _write(tmp_path / "streamed.wav", fmt, "PCM_16")
    data = bytearray(path.read_bytes())
    data[offset:offset + 4] = size.to_bytes(4, order)
    path.write_bytes(bytes(data))
    assert audio_frames(path) == FRAMES
    assert len(load_recording(path).samples) == FRAMES


def test_sew_manifest_refuses_a_cut_rf64_named_wav(tmp_path):
    """The installed ``sew`` script, header-only: exit 2, the file and the problem, no traceback."""
    audio = tmp_path / "audio"
    _write(audio / "good.wav", "WAV", "PCM_16")
    bad = _cut(_write(audio / "bad.wav", "RF64", "PCM_16"))
    argv = [SEW, "manifest", str(audio), "--dest", str(tmp_path / "d"), "--header-only"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("sew manifest: error: ") and "Traceback" not in run.stderr, run.stderr
    assert str(bad) in run.stderr and "truncated: the RF64 header declares" in run.stderr, run.stderr
