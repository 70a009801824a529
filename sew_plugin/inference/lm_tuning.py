"""Choosing the beam decoder's LM weight and word score on held-out data (``sew tune-lm``).

The two trade the acoustic model against the language model, and their best values depend on both:
the papers' 2 / -1 suit a model fine-tuned on LibriSpeech with its 4-gram, not another model or LM.
wav2vec 2.0 chose them per model on dev-other; this does it by a grid. The model runs once over the
manifest and every (weight, score) pair decodes the kept (T, V) log-probabilities again with the same
KenLM model and lexicon trie, so a grid costs one forward and one beam search per pair (in several
processes at once with ``--decode-workers``).
"""

import dataclasses
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from .decoding import KenLMLexiconDecoder, ParallelDecoder
from .transcribe import Utterance, word_error_counts


@dataclass
class GridPoint:
    lm_weight: float
    word_score: float
    wer: float
    uer: float
    word_errors: int
    words: int
    best: bool = False


def decode_grid(utterances: List[Utterance], decoder: KenLMLexiconDecoder, lm_weights: Sequence[float],
                word_scores: Sequence[float], log: Callable[[str], None] = print,
                parallel: Optional[ParallelDecoder] = None) -> List[GridPoint]:
    """WER of ``utterances`` (each with its references and kept ``emissions``) decoded at every
    (LM weight, word score) pair, in grid order; the best marked: fewest word errors, then fewest
    letter errors, then the first in grid order. With ``parallel`` (a ``ParallelDecoder`` of
    ``decoder``'s lexicon and LM) its workers decode every pair's utterances, all pairs queued at
    once; each utterance is decoded whole by one worker under its pair's options, so the points
    are the serial ones."""
    missing = [u.id for u in utterances if u.emissions is None or u.ref is None]
    if missing:
        raise ValueError(f"{len(missing)} utterances without kept emissions or references (the first: {missing[0]}): "
                         "transcribe with keep_emissions=True and a label file")
    if not any(u.ref for u in utterances):
        raise ValueError("the references hold no words: every pair would score 0% WER")
    pairs = [dataclasses.replace(decoder.options, lm_weight=w, word_score=s) for w in lm_weights for s in word_scores]
    if parallel is None:
        words = (_decoded(decoder.with_options(options), utterances) for options in pairs)
    else:
        queued = [[parallel.submit(u.emissions, options) for u in utterances] for options in pairs]
        words = ([future.result()[0] for future in futures] for futures in queued)
    points = []
    for options, hyps in zip(pairs, words):
        decoded = [dataclasses.replace(u, hyp=hyp) for u, hyp in zip(utterances, hyps)]
        we, n_words, le, letters = word_error_counts(decoded)
        points.append(GridPoint(options.lm_weight, options.word_score, we / max(n_words, 1), le / max(letters, 1),
                                we, n_words))
        log(f"LM weight {options.lm_weight:g}, word score {options.word_score:g}: WER {100 * points[-1].wer:.2f}%")
    # every pair is scored against the same references, so fewer letter errors is a lower letter error rate
    best = min(points, key=lambda p: (p.word_errors, p.uer))  # min keeps the first of equals
    best.best = True
    return points


def _decoded(decoder: KenLMLexiconDecoder, utterances: List[Utterance]) -> List[List[str]]:
    return [decoder.decode(u.emissions) for u in utterances]


def best_point(points: List[GridPoint]) -> GridPoint:
    return next(p for p in points if p.best)


def edges_reached(points: List[GridPoint]) -> List[str]:
    """Where the best point lies on the grid's edge, beyond which a better pair may lie: its word score
    at either end, its LM weight at the top (or at the bottom above 0, the weight's own bound)."""
    best, weights, scores = best_point(points), [p.lm_weight for p in points], [p.word_score for p in points]
    edges = []
    if (best.lm_weight == max(weights) and len(set(weights)) > 1) or best.lm_weight == min(weights) > 0:
        edges.append(f"LM weight {best.lm_weight:g}")
    if best.word_score in (min(scores), max(scores)) and len(set(scores)) > 1:
        edges.append(f"word score {best.word_score:g}")
    return edges


def to_markdown(points: List[GridPoint]) -> str:
    """WER as a table: one row per LM weight, one column per word score; the best in bold."""
    weights = list(dict.fromkeys(p.lm_weight for p in points))
    scores = list(dict.fromkeys(p.word_score for p in points))
    cell = {(p.lm_weight, p.word_score): (f"**{100 * p.wer:.2f}%**" if p.best else f"{100 * p.wer:.2f}%")
            for p in points}
    head = ("| LM weight \\ word score | " + " | ".join(f"{s:g}" for s in scores) + " |\n"
            + "|---" * (len(scores) + 1) + "|\n")
    return head + "".join(f"| {w:g} | " + " | ".join(cell[w, s] for s in scores) + " |\n" for w in weights)
