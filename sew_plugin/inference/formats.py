"""A transcript with word times written as the field's files: plain text, JSON, SubRip (``.srt``),
WebVTT (``.vtt``) and NIST's CTM (``.ctm``: ``<file> <channel> <start> <duration> <word> <confidence>``,
what sclite and asclite score against).

Subtitle cues hold consecutive words: a new cue starts after ``CUE_SECONDS`` of speech, after
``CUE_CHARACTERS`` characters, or at a pause of ``CUE_PAUSE`` seconds or more.
"""

import json
from typing import Callable, Dict, List

from .alignment import Word

CUE_SECONDS, CUE_CHARACTERS, CUE_PAUSE = 6.0, 42, 1.0


def cues(words: List[Word]) -> List[List[Word]]:
    """Consecutive words grouped into subtitle cues (see the module's docstring)."""
    groups: List[List[Word]] = []
    for word in words:
        current = groups[-1] if groups else None
        if (current is None or word.end - current[0].start > CUE_SECONDS or word.start - current[-1].end >= CUE_PAUSE
                or len(" ".join(w.word for w in current + [word])) > CUE_CHARACTERS):
            groups.append([word])
        else:
            current.append(word)
    return groups


def _clock(seconds: float, separator: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{separator}{ms % 1000:03d}"


def to_txt(transcript) -> str:
    return transcript.text + "\n"


def to_json(transcript) -> str:
    return json.dumps(transcript.as_dict(), indent=2, ensure_ascii=False) + "\n"


def to_srt(transcript) -> str:
    blocks = [f"{n}\n{_clock(c[0].start, ',')} --> {_clock(c[-1].end, ',')}\n{' '.join(w.word for w in c)}\n"
              for n, c in enumerate(cues(transcript.words), start=1)]
    return "\n".join(blocks)


def to_vtt(transcript) -> str:
    blocks = [f"{_clock(c[0].start, '.')} --> {_clock(c[-1].end, '.')}\n{' '.join(w.word for w in c)}\n"
              for c in cues(transcript.words)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_ctm(transcript) -> str:
    name = transcript.name.replace(" ", "_")  # a CTM field holds no blank
    return "".join(f"{name} 1 {w.start:.3f} {w.end - w.start:.3f} {w.word} {w.confidence:.3f}\n"
                   for w in transcript.words)


FORMATS: Dict[str, Callable] = {"txt": to_txt, "json": to_json, "srt": to_srt, "vtt": to_vtt, "ctm": to_ctm}
