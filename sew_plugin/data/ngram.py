"""A word n-gram language model in ARPA format, estimated from text with Witten-Bell smoothing.

For the KenLM beam decoder on small corpora (the demo, tests) without any download. The
interpolated Witten-Bell estimate

    p(w | h) = (c(h, w) + t(h) * p(w | h')) / (c(h) + t(h)),   t(h) = distinct words after h,

is written in ARPA's backoff form: explicit probabilities for seen n-grams and, for each history,
the backoff weight that makes its distribution sum to one.

<unk> in the text (TED-LIUM and Switchboard transcripts mark unintelligible words so) is counted as
the unknown word, plus one count reserved so that it is never zero: one <unk> unigram, and n-grams
with <unk> like any other word's. <s> and </s> are the sentence boundaries the model adds around
each line itself; inside a line they would be predicted mid-sentence, so such text is refused, by
file and line (KenLM's lmplz refuses them too, unless --skip_symbols makes them whitespace).
"""

import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

from .errors import DataError, output_file, read_lines

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


class WittenBellLM:
    def __init__(self, sentences: Iterable[Sequence[str]], order: int = 3):
        if order < 2:
            raise ValueError(f"--order must be >= 2 (KenLM needs at least bigrams), got {order}")
        self.order = order
        self.counts: List[Counter] = [Counter() for _ in range(order + 1)]  # counts[k]: k-gram tuples
        for words in sentences:
            tokens = [BOS, *words, EOS]
            for k in range(1, order + 1):
                start = 1 if k == 1 else 0  # <s> is a history, never predicted
                for i in range(start, len(tokens) - k + 1):
                    self.counts[k][tuple(tokens[i : i + k])] += 1
        if not self.counts[1]:
            raise ValueError("no words to estimate a language model from")
        self.followers: Dict[Tuple[str, ...], Counter] = defaultdict(Counter)
        for k in range(2, order + 1):
            for gram, n in self.counts[k].items():
                self.followers[gram[:-1]][gram[-1]] += n
        self.total = sum(self.counts[1].values())
        self._cache: Dict[Tuple[Tuple[str, ...], str], float] = {}

    def prob(self, word: str, history: Tuple[str, ...]) -> float:
        """Interpolated p(word | history), history truncated to order - 1 words."""
        history = history[-(self.order - 1):]
        key = (history, word)
        if key not in self._cache:
            if not history:
                count = self.counts[1][(word,)] + (word == UNK)
                p = count / (self.total + 1)
            else:
                lower = self.prob(word, history[1:])
                following = self.followers.get(history)
                if not following:
                    p = lower
                else:
                    c_h, t_h = sum(following.values()), len(following)
                    p = (following.get(word, 0) + t_h * lower) / (c_h + t_h)
            self._cache[key] = p
        return self._cache[key]

    def backoff(self, history: Tuple[str, ...]) -> float:
        """Weight that turns ARPA's backoff to p(. | history[1:]) into the interpolated p(. | history)."""
        following = self.followers.get(history)
        if not following:
            return 1.0
        seen = list(following)
        kept = 1.0 - sum(self.prob(w, history) for w in seen)
        lower = 1.0 - sum(self.prob(w, history[1:]) for w in seen)
        return kept / lower if lower > 0 else 1.0

    def to_arpa(self) -> str:
        sections = []
        unigrams = [(BOS,)] + sorted(self.counts[1].keys() | {(UNK,)})
        grams_by_order = [unigrams] + [sorted(self.counts[k]) for k in range(2, self.order + 1)]
        for k, grams in enumerate(grams_by_order, start=1):
            lines = []
            for gram in grams:
                logp = -99.0 if gram == (BOS,) else math.log10(self.prob(gram[-1], gram[:-1]))
                line = f"{logp:.6f}\t{' '.join(gram)}"
                if k < self.order:
                    line += f"\t{math.log10(self.backoff(gram)):.6f}"
                lines.append(line)
            sections.append(f"\\{k}-grams:\n" + "\n".join(lines))
        header = "\\data\\\n" + "".join(f"ngram {k}={len(g)}\n" for k, g in enumerate(grams_by_order, start=1))
        return header + "\n" + "\n\n".join(sections) + "\n\n\\end\\\n"


def write_arpa(text_files: Sequence[Path], dest: Path, order: int = 3, overwrite: bool = False) -> Tuple[int, int]:
    """Estimate from ``text_files`` (one sentence per line, e.g. ``.wrd``) and write ``dest`` (an
    existing one only with ``overwrite``).

    Returns (sentences, vocabulary size).
    """
    sentences = []
    for path in map(Path, text_files):
        for number, line in enumerate(read_lines(path, "text file"), start=1):
            words = line.split()
            boundary = next((w for w in words if w in (BOS, EOS)), None)
            if boundary:
                raise DataError(path, f"{boundary} in the text: <s> and </s> are the sentence-boundary symbols "
                                      "the model adds around every line itself; remove them", number)
            if words:
                sentences.append(words)
    if not sentences:
        raise DataError(", ".join(map(str, text_files)), "no sentences found")
    dest = output_file(dest, overwrite)
    lm = WittenBellLM(sentences, order)
    dest.write_text(lm.to_arpa(), encoding="utf-8")
    return len(sentences), sum(1 for (w,) in lm.counts[1] if w not in (EOS, UNK))  # the words, as sew lexicon counts them
