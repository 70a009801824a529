"""CTC decoders behind one small interface: greedy (Viterbi) and flashlight-text's lexicon beam
search with a KenLM language model (the wav2letter decoder of the SEW and St-SEW papers).

Both take one utterance's (T, V) log-probabilities over fairseq's letter dictionary, whose blank
is ``<s>`` (index 0) and whose word boundary is ``|``, and return the words.
"""

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from ..data.errors import DataError

BLANK = "<s>"
WORD_BOUNDARY = "|"


def path_units(path: List[int], tgt_dict) -> str:
    """A frame path as fairseq's ``infer.py`` writes its units: repeats merged, blanks dropped,
    the dictionary's symbols separated by spaces (``H I | T H E R E``)."""
    blank = tgt_dict.index(BLANK)
    ids = [t for i, t in enumerate(path) if t != blank and (i == 0 or t != path[i - 1])]
    return tgt_dict.string(torch.tensor(ids, dtype=torch.long)) if ids else ""


def letters_to_words(symbols: List[str]) -> List[str]:
    """Letter symbols (``H I | T H E R E |``) -> words (``HI THERE``)."""
    return "".join(symbols).replace(WORD_BOUNDARY, " ").split()


class Decoder:
    """What every decoder answers: ``hypothesis(emissions)`` (words, and the token of every frame on
    their path); ``decode`` the words alone, ``hypotheses`` those of several utterances."""

    def decode(self, emissions: torch.Tensor) -> List[str]:
        return self.hypothesis(emissions)[0]

    def hypotheses(self, batch: List[torch.Tensor]) -> List[Tuple[List[str], List[int]]]:
        return [self.hypothesis(e) for e in batch]


class ViterbiDecoder(Decoder):
    """Best path: argmax per frame, merge repeats, drop blanks."""

    def __init__(self, tgt_dict):
        self.tgt_dict = tgt_dict
        self.blank = tgt_dict.index(BLANK)

    def hypothesis(self, emissions: torch.Tensor) -> Tuple[List[str], List[int]]:
        """The words and the token of every frame (its argmax)."""
        path = emissions.argmax(-1)
        ids = torch.unique_consecutive(path)
        return letters_to_words([self.tgt_dict[i] for i in ids.tolist() if i != self.blank]), path.tolist()


@dataclass
class BeamOptions:
    beam: int = 50
    beam_size_token: int = 0  # 0: the whole vocabulary
    beam_threshold: float = 25.0
    lm_weight: float = 2.0
    word_score: float = -1.0
    unk_score: float = float("-inf")
    sil_score: float = 0.0


class KenLMLexiconDecoder(Decoder):
    """flashlight-text ``LexiconDecoder`` over a lexicon trie scored by a KenLM model.

    The trie holds every lexicon spelling with its word's unigram LM score, smeared with MAX
    (as flashlight-text and fairseq build it); only lexicon words can be produced.
    """

    def __init__(self, tgt_dict, lexicon: Path, lm: Path, options: BeamOptions = BeamOptions()):
        try:
            from flashlight.lib.text.decoder import SmearingMode, Trie
            from flashlight.lib.text.decoder.kenlm import KenLM
            from flashlight.lib.text.dictionary import create_word_dict, load_words
        except ImportError as err:
            raise ImportError(f"the kenlm decoder needs flashlight-text (pip install flashlight-text): {err}") from err
        for path, what in ((lexicon, "lexicon"), (lm, "language model")):
            if not Path(path).is_file():
                raise DataError(path, f"{what} not found")

        self.tgt_dict = tgt_dict
        self.blank = tgt_dict.index(BLANK)
        silence = tgt_dict.index(WORD_BOUNDARY)
        words = load_words(str(lexicon))
        self.word_dict = create_word_dict(words)
        try:
            self.lm = KenLM(str(lm), self.word_dict)
        except RuntimeError as err:  # KenLM reports format problems as C++ exceptions
            raise DataError(lm, f"not a usable KenLM model (ARPA with n >= 2, or binary): {err}") from None
        trie = Trie(len(tgt_dict), silence)
        start = self.lm.start(False)
        for word, spellings in words.items():
            word_idx = self.word_dict.get_index(word)
            _, score = self.lm.score(start, word_idx)
            for spelling in spellings:
                ids = [tgt_dict.index(symbol) for symbol in spelling]
                if tgt_dict.unk() in ids:
                    raise DataError(lexicon, f"spelling {' '.join(spelling)} of {word!r} uses symbols outside the model's dictionary")
                trie.insert(ids, word_idx, score)
        trie.smear(SmearingMode.MAX)
        self.trie, self.options = trie, options
        self.decoder = self._lexicon_decoder(options)

    def _lexicon_decoder(self, options: BeamOptions):
        from flashlight.lib.text.decoder import CriterionType, LexiconDecoder, LexiconDecoderOptions

        opts = LexiconDecoderOptions(
            beam_size=options.beam,
            beam_size_token=options.beam_size_token or len(self.tgt_dict),
            beam_threshold=options.beam_threshold,
            lm_weight=options.lm_weight,
            word_score=options.word_score,
            unk_score=options.unk_score,
            sil_score=options.sil_score,
            log_add=False,
            criterion_type=CriterionType.CTC,
        )
        unk_word = self.word_dict.get_index("<unk>")
        silence = self.tgt_dict.index(WORD_BOUNDARY)
        return LexiconDecoder(opts, self.trie, self.lm, silence, self.blank, unk_word, [], False)

    def with_options(self, options: BeamOptions) -> "KenLMLexiconDecoder":
        """This decoder under other ``options`` (an LM weight and word score of a grid, say), sharing
        its KenLM model and lexicon trie: the trie's scores are the LM's, not yet weighted, so only
        the beam search is built again (the files are not read again)."""
        other = copy.copy(self)
        other.options, other.decoder = options, self._lexicon_decoder(options)
        return other

    def decode_nbest(self, emissions: torch.Tensor):
        """flashlight's hypotheses, best first (each has ``.score``, ``.words``, ``.tokens``)."""
        emissions = emissions.float().contiguous().cpu()
        frames, vocab = emissions.shape
        return self.decoder.decode(emissions.data_ptr(), frames, vocab)

    def hypothesis(self, emissions: torch.Tensor) -> Tuple[List[str], List[int]]:
        """The best hypothesis's words and the token of every frame on its path (flashlight's path
        has a silence node before the first frame and after the last: dropped)."""
        best = self.decode_nbest(emissions)[0]
        return [self.word_dict.get_entry(w) for w in best.words if w >= 0], list(best.tokens)[1:-1]


def _kenlm(tgt_dict, lexicon, lm, options: BeamOptions) -> KenLMLexiconDecoder:
    if lexicon is None or lm is None:
        raise ValueError("--decoder kenlm needs --lexicon and --lm")
    return KenLMLexiconDecoder(tgt_dict, lexicon, lm, options)


DECODERS = {
    "viterbi": lambda tgt_dict, lexicon, lm, options: ViterbiDecoder(tgt_dict),
    "kenlm": _kenlm,
}


def build_decoder(kind: str, tgt_dict, lexicon=None, lm=None, options: BeamOptions = BeamOptions()):
    """The decoder ``kind`` of ``DECODERS`` over ``tgt_dict`` (the beam search with ``lexicon`` and ``lm``)."""
    if kind not in DECODERS:
        raise ValueError(f"unknown decoder {kind!r}; choose from {tuple(DECODERS)}")
    return DECODERS[kind](tgt_dict, lexicon, lm, options)


_WORKER_DECODER = None  # the decoder of a ParallelDecoder's worker process
_WORKER_RETUNED = None  # (options, that decoder under them): the latest options a task named


def _start_worker(kind, tgt_dict, lexicon, lm, options) -> None:
    global _WORKER_DECODER
    torch.set_num_threads(1)
    _WORKER_DECODER = build_decoder(kind, tgt_dict, lexicon, lm, options)


def _decode_in_worker(emissions, options: Optional[BeamOptions] = None) -> Tuple[List[str], List[int]]:
    global _WORKER_RETUNED
    decoder = _WORKER_DECODER
    if options is not None:  # a grid's tasks come pair by pair: the beam search is rebuilt at each new pair
        if _WORKER_RETUNED is None or _WORKER_RETUNED[0] != options:
            _WORKER_RETUNED = (options, decoder.with_options(options))
        decoder = _WORKER_RETUNED[1]
    return decoder.hypothesis(torch.from_numpy(emissions))


class ParallelDecoder(Decoder):
    """``workers`` processes, each with its own decoder built as ``build_decoder`` builds it, decoding
    several utterances at once: flashlight-text's beam search holds Python's GIL, so threads would
    take turns. Build the decoder once in this process first: its files and options are checked there,
    by name, not in a worker. Each utterance is decoded whole by one worker, so the results are the serial ones.
    Use it as a context manager (the processes end with it)."""

    def __init__(self, workers: int, kind: str, tgt_dict, lexicon=None, lm=None, options: BeamOptions = BeamOptions()):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.tgt_dict = tgt_dict
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_worker, initargs=(kind, tgt_dict, lexicon, lm, options))

    def submit(self, emissions: torch.Tensor, options: Optional[BeamOptions] = None):
        """A future of ``hypothesis(emissions)``; with ``options``, of the workers' kenlm decoder
        under them (``KenLMLexiconDecoder.with_options``: ``sew tune-lm``'s grid)."""
        return self.pool.submit(_decode_in_worker, emissions.float().contiguous().numpy(), options)

    def hypothesis(self, emissions: torch.Tensor) -> Tuple[List[str], List[int]]:
        return self.submit(emissions).result()

    def hypotheses(self, batch: List[torch.Tensor]) -> List[Tuple[List[str], List[int]]]:
        return [f.result() for f in [self.submit(e) for e in batch]]

    def close(self, cancel: bool = False) -> None:
        """End the processes after the queued utterances (``cancel``: after the running ones only)."""
        self.pool.shutdown(cancel_futures=cancel)

    def __enter__(self):
        return self

    def __exit__(self, error_type, *exc):
        self.close(cancel=error_type is not None)  # an error or Ctrl-C does not wait for the rest of a queue
        return False
