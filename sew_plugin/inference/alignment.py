"""Words with times and confidences from a CTC frame path.

A path gives each output frame a token (the blank ``<s>``, a letter, or the word boundary ``|``):
the greedy decoder's is the argmax of every frame, the beam search's the token sequence of its best
hypothesis. A letter's frames are the run of frames on it; a word is the letters between
boundaries. Its start is the first frame of its first letter, its end the frame after its last
letter's run, in seconds by the model's frame period. Its confidence is the mean posterior, over
the frames of its letters, of the letter on each frame: in [0, 1], 1 when the model put all its
mass on the word's letters.
"""

from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import torch

from .decoding import BLANK, WORD_BOUNDARY


@dataclass
class Word:
    word: str
    start: float  # seconds
    end: float
    confidence: float

    def as_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def align_words(path: Sequence[int], lprobs: torch.Tensor, tgt_dict, frame_period_ms: float,
                words: Optional[Sequence[str]] = None) -> List[Word]:
    """The words of the (T,) token ``path`` over (T, V) log-probabilities ``lprobs``. With the
    decoder's ``words``, the path's first letter groups are theirs: a lexicon beam search's path
    may end inside a word it has not emitted (its letters after the last ``|``), which is no word."""
    blank, boundary = tgt_dict.index(BLANK), tgt_dict.index(WORD_BOUNDARY)
    path = [int(t) for t in path]
    posterior = lprobs[torch.arange(len(path)), torch.tensor(path, dtype=torch.long)].exp().tolist() if path else []
    found: List[Word] = []
    letters, frames, first, last = [], [], None, None
    previous = blank

    def close():
        if letters:
            found.append(Word("".join(letters), first * frame_period_ms / 1000, (last + 1) * frame_period_ms / 1000,
                              sum(frames) / len(frames)))
        letters.clear()
        frames.clear()

    for t, token in enumerate(path):
        if token == boundary:
            close()
        elif token != blank:
            if token != previous:  # a new letter (a repeat on consecutive frames is one letter)
                if not letters:
                    first = t
                letters.append(tgt_dict[token])
            frames.append(posterior[t])
            last = t
        previous = token
    close()
    if words is None:
        return found
    if len(found) < len(words):
        raise ValueError(f"the decoder's path spells {len(found)} words, its hypothesis has {len(words)}")
    return [Word(word, w.start, w.end, w.confidence) for word, w in zip(words, found)]

