"""Transcribing recordings as people have them: a fine-tuned CTC checkpoint, any audio file or array
(``data.recordings``), any length (``windows``), words with times and confidences (``alignment``).
``sew transcribe`` is this module's command (``sew_plugin.cli.transcribe``)::

    from sew_plugin.inference.transcriber import Transcriber

    transcriber = Transcriber.from_checkpoint("checkpoint_best.pt")
    transcript = transcriber.transcribe("interview.mp3")        # or (samples, sample_rate=44100)
    for word in transcript.words:
        print(word.word, word.start, word.end, word.confidence)
"""

import copy
import math
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch

from ..data.audio import MIN_SAMPLES, SAMPLE_RATE
from ..data.errors import DataError
from ..data.recordings import Recording, load_recording, make_recording
from .alignment import Word, align_words
from .decoding import BeamOptions, build_decoder
from .settings import (NBEST, READ_BY, load_for_inference, require_fixed_cif_lambda, require_fixed_operating_point,
                       set_cif_lambda, set_exit_policy, set_operating_point, unread)
from .windows import Windowing, forward_windows, hop_samples, samples_per_frame


@dataclass
class Transcript:
    """One recording's words, with times in seconds from its start and confidences in [0, 1]."""

    name: str
    words: List[Word]
    seconds: float  # audio duration
    windows: int  # forwards it took (1 when it fits one window)
    frame_period_ms: float
    source: Optional[str] = None  # the file, if it came from one
    sample_rate: Optional[int] = None  # the file's own rate and channels (the model ran at 16 kHz mono)
    channels: Optional[int] = None
    exit_layers: Optional[List[int]] = None  # early-exit models under a policy: each window's exit layer
    settings: Dict[str, Any] = field(default_factory=dict)  # the model and decoder that produced it

    @property
    def text(self) -> str:
        return " ".join(w.word for w in self.words)

    def as_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "words"}
        return {"text": self.text, **out, "words": [w.as_dict() for w in self.words]}


def describe(checkpoint, decoder: str, lm=None, lexicon=None, beam: Optional[BeamOptions] = None,
             operating_point=None, cif_lambda=None, exit_policy=None, threshold=None, exit_layer=None,
             dtype: str = "fp32") -> Dict[str, Any]:
    """The settings a transcript records: the checkpoint, the decoder (and its beam options and
    files), the model's setting. An infinite score is written as text: JSON has no infinity."""
    settings = {"checkpoint": str(checkpoint), "dtype": dtype, "decoder": decoder, "operating_point": operating_point,
                "cif_lambda": cif_lambda, "exit_policy": exit_policy, "threshold": threshold, "exit_layer": exit_layer}
    if decoder == "kenlm":
        settings.update(lm=str(lm), lexicon=str(lexicon), **asdict(beam or BeamOptions()))
    return {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in settings.items()}


class Transcriber:
    """A CTC model and its decoder, for recordings of any length; see the module's docstring."""

    def __init__(self, model, decoder, normalize: bool = False, windowing: Optional[Windowing] = None,
                 device: str = "cpu", settings: Optional[Dict[str, Any]] = None):
        windowing = windowing or Windowing()
        require_fixed_operating_point(model)  # a model drawing its setting per forward transcribes at random
        require_fixed_cif_lambda(model)
        hop_samples(windowing, samples_per_frame(model)[1])  # a model or window that cannot work: refused now
        self.model, self.decoder, self.normalize = model, decoder, normalize
        self.windowing, self.device = windowing, device
        self.settings = {**(settings or {}), "window_seconds": windowing.window, "context_seconds": windowing.context}

    @classmethod
    def from_checkpoint(cls, checkpoint: Union[str, Path], data: Optional[Path] = None, decoder: str = "viterbi",
                        lm: Optional[Path] = None, lexicon: Optional[Path] = None, beam: Optional[BeamOptions] = None,
                        operating_point: Optional[str] = None, cif_lambda: Optional[float] = None,
                        exit_policy: Optional[str] = None, threshold: Optional[float] = None,
                        exit_layer: Optional[int] = None, nbest: int = NBEST, windowing: Optional[Windowing] = None,
                        device: str = "cpu", threads: int = 0, dtype: str = "fp32") -> "Transcriber":
        """The checkpoint loaded for inference (its dictionary from ``data``/dict.ltr.txt, by default
        the folder it was fine-tuned from) in ``dtype`` (fp32, bf16, fp16 or int8:
        ``precision``), at the given setting, with the greedy (``viterbi``) or KenLM (``kenlm``,
        with ``lm`` and ``lexicon``) decoder. Bad settings raise ``ValueError``, as do settings this
        decoder and exit policy would not read (``settings.unread``: e.g. ``lm`` without ``kenlm``)."""
        given = [name for name, value in (("lm", lm), ("lexicon", lexicon), ("threshold", threshold),
                                          ("exit_layer", exit_layer)) if value is not None]
        given += ["beam"] * (beam not in (None, BeamOptions())) + ["nbest"] * (nbest != NBEST)  # defaults: not given
        ignored = unread(given, decoder, exit_policy)
        if ignored:
            reasons = [f"{name} is for {READ_BY[name][0]} {' or '.join(map(repr, READ_BY[name][1]))}" for name in ignored]
            raise ValueError(f"{'; '.join(reasons)} (this transcriber would ignore {'them' if ignored[1:] else 'it'})")
        model, task, normalize = load_for_inference(Path(checkpoint), data, device, threads, "transcribe", dtype)
        search = build_decoder(decoder, task.target_dictionary, lexicon, lm, beam or BeamOptions())
        if operating_point is not None:
            set_operating_point(model, operating_point)
        if cif_lambda is not None:
            set_cif_lambda(model, cif_lambda)
        if exit_policy is not None:
            set_exit_policy(model, exit_policy, threshold, exit_layer, nbest, search if decoder == "kenlm" else None)
        settings = describe(checkpoint, decoder, lm, lexicon, beam, operating_point, cif_lambda, exit_policy, threshold,
                            exit_layer, dtype)
        return cls(model, search, normalize, windowing or Windowing(), device, settings)

    def with_decoder(self, decoder) -> "Transcriber":
        """This transcriber with another decoder over the same dictionary (``decoding.ParallelDecoder``)."""
        other = copy.copy(self)
        other.decoder = decoder
        return other

    def transcribe(self, audio: Union[str, Path, np.ndarray, torch.Tensor], sample_rate: Optional[int] = None,
                   name: Optional[str] = None) -> Transcript:
        """The transcript of a file (any format libsndfile reads) or of an array of samples: (S,)
        mono or (S, C), at ``sample_rate`` (required for an array; resampled to 16 kHz)."""
        if isinstance(audio, (str, Path)):
            return self.transcribe_recording(load_recording(Path(audio)), name)
        if sample_rate is None:
            raise ValueError("an array of samples needs its sample_rate")
        if isinstance(audio, torch.Tensor):
            audio = audio.detach().cpu().numpy()
        return self.transcribe_recording(make_recording(audio, sample_rate), name)

    def transcribe_recording(self, recording: Recording, name: Optional[str] = None) -> Transcript:
        return self.start(recording, name)()

    def start(self, recording: Recording, name: Optional[str] = None,
              progress: Optional[Callable[[float], None]] = None) -> Callable[[], Transcript]:
        """Run the model on ``recording`` now and hand its decoding to the decoder's workers when it
        has them (``decoding.ParallelDecoder``): the returned call waits for it and gives the
        transcript, so the next recording's forward runs while this one is decoded. ``progress``:
        called with the share of the recording run so far, after each batch of windows."""
        least = max(MIN_SAMPLES, getattr(self.model, "min_source_samples", 0))  # input downsampling needs more
        if len(recording.samples) < least:
            raise DataError(recording.path or "the samples", f"{len(recording.samples)} samples at 16 kHz, fewer "
                            f"than the {least} this model needs for one output frame")
        out = forward_windows(self.model, torch.from_numpy(recording.samples), self.windowing, self.device,
                              self.normalize, progress)
        if hasattr(self.decoder, "submit"):
            decoding = self.decoder.submit(out.lprobs)
        else:
            decoding = Future()
            decoding.set_result(self.decoder.hypothesis(out.lprobs))

        def finish() -> Transcript:
            words, path = decoding.result()
            words = align_words(path, out.lprobs, self.decoder.tgt_dict, out.frame_period_ms, words)
            source = recording.path
            return Transcript(name or (source.stem if source else "audio"), words, len(recording.samples) / SAMPLE_RATE,
                              out.windows, out.frame_period_ms, str(source) if source else None, recording.sample_rate,
                              recording.channels, out.exit_layers, self.settings)

        return finish
