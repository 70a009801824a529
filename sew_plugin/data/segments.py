"""Segment files: the unsupervised phone segments that guide CIF's alpha in pre-training (Chen et al., 2023).

Format (``<split>.<task.segments>`` beside ``<split>.tsv``): one line per manifest row (the rows
after the root line, same order); each line the segments' END times in seconds, separated by
spaces, strictly ascending, each > 0 and at most the utterance's duration plus ``END_SLACK`` (half
a 20 ms frame). An empty line is an utterance with no boundary. Seconds, so the file depends
neither on the sample rate nor on the frame rate::

    0.12 0.31 0.45 0.9
    <empty: no boundary>
    0.08 0.2

The model takes them as exclusive end frames at 20 ms (``cif_boundaries``, see
``sew_plugin.modules.cif.guidance_loss``); ``to_frames`` converts one utterance's, for the part a
crop keeps.
"""

import math
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

from .errors import DataError, read_lines
from .manifest import Manifest, row_count_error

END_SLACK = 0.01  # seconds a segment may end after the audio: half a frame, the aligner's rounding


def _parse_line(line: str, duration: float) -> np.ndarray:
    ends = []
    for token in line.split():
        try:
            t = float(token)
        except ValueError:
            raise ValueError(f"{token!r} is not a number of seconds") from None
        if not math.isfinite(t):
            raise ValueError(f"{token!r} is not a finite number of seconds")
        if not 0 < t <= duration + END_SLACK:
            raise ValueError(f"segment end {token} s is outside the utterance (0, {duration:g}] s")
        if ends and t <= ends[-1]:
            raise ValueError(f"segment ends are not strictly ascending: {token} after {ends[-1]:g}")
        ends.append(t)
    return np.asarray(ends, dtype=np.float64)


def read_segments(path: Union[str, Path], manifest: Manifest, sample_rate: int,
                  errors: Optional[List[DataError]] = None) -> List[np.ndarray]:
    """The segment end times (seconds, ascending) of every row of ``manifest``.

    Raises ``DataError`` naming ``path`` and the line: a line count other than the manifest's row
    count (both named), a token that is not a finite number, ends not strictly ascending, an end
    <= 0 or past the utterance. With ``errors`` (a list), every bad line is appended to it (its
    row left without boundaries) instead of raising at the first.
    """
    path = Path(path)
    lines = read_lines(path, "segment file")
    mismatch = row_count_error(path, lines, manifest, "segment")
    if mismatch:
        raise mismatch
    out = []
    for i, (line, (_, samples)) in enumerate(zip(lines, manifest.entries)):
        try:
            out.append(_parse_line(line, samples / sample_rate))
        except ValueError as err:
            if errors is None:
                raise DataError(path, str(err), i + 1) from None
            errors.append(DataError(path, str(err), i + 1))
            out.append(np.zeros(0))
    return out


def to_frames(ends: np.ndarray, offset: float, duration: float, frames: int, frame_seconds: float = 0.02) -> np.ndarray:
    """Segment ends (seconds in the whole utterance) -> ascending exclusive end frames in a crop.

    The crop starts ``offset`` s into the utterance, lasts ``duration`` s and gives ``frames``
    frames. Ends before the crop (or within its first half frame) or after it (beyond
    ``END_SLACK``) are dropped; the others, at ``round((t - offset) / frame_seconds)``, are
    clamped to ``frames`` (the extractor's last frame ends before the audio does), and ends that
    fall on the same frame kept once. The crop's end is not added: only a segment ends a segment.
    """
    rel = ends - offset
    index = np.rint(rel[rel <= duration + END_SLACK] / frame_seconds).astype(np.int64)
    return np.unique(np.minimum(index[index >= 1], frames))
