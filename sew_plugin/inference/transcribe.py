"""Transcribing a manifest with a CTC model: batching, decoding, WER / UER and where the time goes.

Every utterance of the manifest is transcribed exactly once (batches never drop a remainder) and
the count is checked. References come from the label file beside the manifest
(``<split>.<labels>``, e.g. ``valid.ltr``): with ``labels`` None a missing ``.ltr`` only means no
WER (the summary says so), a label file named by ``labels`` must exist. Timing separates the model
forward from decoding; the real-time factor is processing time over audio duration. The first
batch runs ``warmup`` untimed forwards first, so one-time costs (first-call allocations, thread
pools) are not charged to it. ``sew infer`` is this module's command (``sew_plugin.cli.infer``).
"""

import json
import time
from dataclasses import asdict, dataclass, field
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

import editdistance
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.audio import SAMPLE_RATE, read_audio
from ..data.errors import DataError, DataErrors, read_lines
from ..data.labels import to_letters
from ..data.manifest import Manifest, check_manifest
from .decoding import letters_to_words, path_units
from .precision import parameter_count
from .settings import require_fixed_cif_lambda, require_fixed_operating_point


LABELS = "ltr"  # the reference labels read when none are named


@dataclass
class Utterance:
    id: str
    hyp: List[str]
    ref: Optional[List[str]]
    seconds: float
    exit_layer: Optional[int] = None  # early-exit models under an exit policy
    units: str = ""  # the hypothesis's symbols, as fairseq's hypo.units files hold them
    emissions: Optional[torch.Tensor] = field(default=None, repr=False)  # (T, V) log-probabilities, if kept


@dataclass
class Summary:
    utterances_in_manifest: int
    utterances_transcribed: int
    audio_seconds: float
    forward_seconds: float
    decode_seconds: float
    wer: Optional[float] = None
    uer: Optional[float] = None
    word_errors: int = 0
    words: int = 0
    parameters: int = 0
    dtype: str = "fp32"  # the number format the model ran in (``precision``)
    exit_policy: Optional[str] = None
    mean_exit_layer: Optional[float] = None
    exit_histogram: Optional[Dict[int, int]] = None  # exit layer -> utterances
    cif_lambda: Optional[float] = None
    frame_period_ms: Optional[float] = None  # CIF models: mean period of the compressed frames
    references: str = ""  # the label file scored against (or looked for)
    warmup_forwards: int = 0  # untimed forwards of the first (or every) batch, not in forward_seconds
    warmup_every_batch: bool = False
    decoder: Dict[str, object] = field(default_factory=dict)  # its kind and settings, as the caller names them
    rtf_forward: float = field(init=False)
    rtf_total: float = field(init=False)

    def __post_init__(self):
        self.rtf_forward = self.forward_seconds / self.audio_seconds
        self.rtf_total = (self.forward_seconds + self.decode_seconds) / self.audio_seconds

    def report(self) -> str:
        lines = [f"transcribed {self.utterances_transcribed} of {self.utterances_in_manifest} utterances "
                 f"({self.audio_seconds:.1f} s of audio)"]
        if self.wer is not None:
            lines.append(f"WER {100 * self.wer:.2f}% ({self.word_errors} errors / {self.words} words), UER {100 * self.uer:.2f}%")
        else:
            lines.append(f"no references: {self.references} not found, WER is not computed")
        lines.append(f"model: {self.parameters / 1e6:.2f}M parameters, {self.dtype}")
        if self.frame_period_ms is not None:
            lines.append(f"CIF lambda {self.cif_lambda:.3f}: mean frame period {self.frame_period_ms:.1f} ms")
        if self.exit_policy:
            histogram = ", ".join(f"layer {k}: {v}" for k, v in sorted(self.exit_histogram.items()))
            lines.append(f"early exit ({self.exit_policy}): mean exit layer {self.mean_exit_layer:.2f}; {histogram}")
        n = self.warmup_forwards
        which = "every" if self.warmup_every_batch else "the first"
        warmup = f", excluding {n} untimed warm-up forward{'s' * (n > 1)} of {which} batch" if n else ""
        lines.append(
            f"time: forward {self.forward_seconds:.2f} s ({1000 * self.rtf_forward:.1f} ms per second of audio"
            f"{warmup}), decoding {self.decode_seconds:.2f} s; real-time factor {self.rtf_total:.4f}"
        )
        return "\n".join(lines)


def plan_batches(lengths: List[int], batch_size: int, max_tokens: int = 0) -> List[List[int]]:
    """Group utterance indices, longest first, into batches; every index appears exactly once.

    With ``max_tokens`` a batch holds as many utterances as fit ``count * longest <= max_tokens``
    (at least one, so an utterance longer than the cap is still transcribed, alone).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for i in order:
        if current:
            longest = lengths[current[0]]
            if max_tokens:
                full = (len(current) + 1) * longest > max_tokens
            else:
                full = len(current) >= batch_size
            if full:
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    return batches


def label_path(manifest_path: Path, labels: Optional[str]) -> Path:
    """``<split>.<labels>`` beside the manifest (``.ltr`` when ``labels`` is None)."""
    return manifest_path.with_suffix(f".{labels or LABELS}")


def read_references(manifest_path: Path, labels: Optional[str], expected: int) -> Optional[List[List[str]]]:
    """Reference words per manifest row; None when ``labels`` is None and there is no ``.ltr`` file
    (a file the user named with ``--labels`` must exist)."""
    path = label_path(manifest_path, labels)
    if not path.is_file():
        if labels:
            raise DataError(path, f"label file not found (--labels {labels})")
        return None
    lines = read_lines(path, "label file", fairseq_reads=True)
    if len(lines) != expected:
        raise DataError(path, f"{len(lines)} label lines for {expected} manifest entries")
    if path.suffix == ".ltr":
        return [letters_to_words(line.split()) for line in lines]
    return [line.split() for line in lines]


def check_reference_letters(path: Path, refs: List[List[str]], tgt_dict) -> None:
    """Refuse, by label file and line, references spelled with letters outside the model's dictionary
    (lower case for an upper-case model, say): scored anyway, every such word would be an error."""
    symbols = tgt_dict.indices
    errors = []
    for line, words in enumerate(refs, start=1):
        unknown = sorted({c for c in "".join(words) if c not in symbols})
        if unknown:
            errors.append(DataError(path, f"letters {unknown} are not in the model's dictionary", line))
    if errors:
        raise DataErrors("reference lines", errors, "the references must be written in the model's letters "
                         f"(its dictionary: {' '.join(s for s in tgt_dict.symbols[tgt_dict.nspecial:])})")


def word_error_counts(utterances: List[Utterance]):
    """(word errors, reference words, letter errors, reference letters) with editdistance."""
    we = words = le = letters = 0
    for u in utterances:
        we += editdistance.eval(u.hyp, u.ref)
        words += len(u.ref)
        hyp_l, ref_l = list("|".join(u.hyp)), list("|".join(u.ref))
        le += editdistance.eval(hyp_l, ref_l)
        letters += len(ref_l)
    return we, words, le, letters


def collate(wavs: List[np.ndarray], normalize: bool):
    """Zero-padded (B, S) batch and its (B, S) padding mask (True = padding)."""
    longest = max(len(w) for w in wavs)
    source = torch.zeros(len(wavs), longest)
    padding = torch.ones(len(wavs), longest, dtype=torch.bool)
    for i, wav in enumerate(wavs):
        x = torch.from_numpy(wav)
        if normalize:  # as fairseq's FileAudioDataset does for models pre-trained with normalize
            x = F.layer_norm(x, x.shape)
        source[i, : len(x)] = x
        padding[i, : len(x)] = False
    return source, padding


def check_inputs(manifest_path: Path, labels: Optional[str]):
    """The manifest and its references (or None), every row checked before any model runs: its
    format, its audio file's header against its sample count, and the label file's line count.
    All bad rows are reported together, each by manifest line and audio file."""
    manifest, errors = check_manifest(manifest_path, SAMPLE_RATE)
    if errors:
        raise DataErrors("manifest rows", errors, "fix them, or leave them out of the manifest")
    return manifest, read_references(manifest_path, labels, len(manifest.entries))


def refuse_short_rows(model, manifest: Manifest) -> None:
    """Refuse, by manifest line, every utterance too short for the model: with input downsampling a
    model needs more samples than the feature extractor's 400 that the manifest check asks for
    (alone such a row failed inside the model; in a padded batch it got no frame and no words)."""
    least = getattr(model, "min_source_samples", 0)
    short = [i for i, (_, n) in enumerate(manifest.entries) if n < least]
    if short:
        raise DataErrors("manifest rows", [
            DataError(manifest.path, f"{manifest.audio_path(i)}: {manifest.entries[i][1]} samples; this model "
                      f"downsamples its input and needs at least {least} for one frame", manifest.line(i))
            for i in short], "leave them out of the manifest, or transcribe them with a model without input downsampling")


def load_batch(manifest: Manifest, batch: List[int]) -> List[np.ndarray]:
    """Every sample of the batch's files; a file that cannot be read whole, or holds NaN or
    infinite samples, is refused by manifest line and file, before the model sees it."""
    wavs = []
    for i in batch:
        try:
            wavs.append(read_audio(manifest.audio_path(i), manifest.entries[i][1], SAMPLE_RATE))
        except DataError as err:
            raise DataError(manifest.path, str(err), manifest.line(i)) from None
    return wavs


def ctc_forward(model, source: torch.Tensor, padding: torch.Tensor, device: torch.device):
    """The model's output and its (B, T, V) log-probabilities on the CPU, for a (B, S) batch."""
    with torch.no_grad():
        net_output = model(source=source.to(device), padding_mask=padding.to(device))
        return net_output, model.get_normalized_probs(net_output, log_probs=True).transpose(0, 1).float().cpu()


@dataclass
class Batching:
    """How ``transcribe`` batches and times: ``batch_size`` utterances per forward (or, with
    ``max_tokens`` > 0, as many as fit that many padded samples), on ``device``, with ``warmup``
    untimed forwards before the first batch's timed one (before every batch's with
    ``warm_every_batch``: each new batch shape has first-call costs of its own)."""

    batch_size: int = 8
    max_tokens: int = 0
    device: str = "cpu"
    warmup: int = 1
    warm_every_batch: bool = False


def transcribe(model, manifest_path: Path, decoder, labels: Optional[str] = None, normalize: bool = False,
               batching: Batching = Batching(), inputs=None, keep_emissions: bool = False):
    """Transcribe every row of the manifest with the CTC ``model`` and ``decoder``: (utterances,
    summary). ``labels``: the reference labels' extension (None: ``.ltr`` if present); ``normalize``:
    layer-normalise each waveform, as the checkpoint's task did; ``inputs``: what ``check_inputs``
    returned for them, when the caller has checked them already (each manifest row's audio header
    is read once); ``keep_emissions``: each utterance keeps its (T, V) log-probabilities, to be
    decoded again (``lm_tuning``)."""
    require_fixed_operating_point(model)  # a model drawing its setting per forward transcribes at random
    require_fixed_cif_lambda(model)
    manifest, refs = inputs if inputs is not None else check_inputs(manifest_path, labels)
    refuse_short_rows(model, manifest)
    if refs is not None:
        check_reference_letters(label_path(manifest_path, labels), refs, decoder.tgt_dict)
    lengths = [n for _, n in manifest.entries]
    results: List[Optional[Utterance]] = [None] * len(lengths)
    forward_s = decode_s = 0.0
    cif_input_ms = cif_outputs = 0.0  # audio in, compressed frames out
    cif_lambda = None
    device = torch.device(batching.device)
    batches = plan_batches(lengths, batching.batch_size, batching.max_tokens)
    for number, batch in enumerate(tqdm(batches, desc="transcribing", unit="batch", disable=None, leave=False)):
        wavs = load_batch(manifest, batch)
        source, padding = collate(wavs, normalize)
        if number == 0 or batching.warm_every_batch:  # the first is the longest: it makes the largest allocations
            for _ in range(batching.warmup):
                ctc_forward(model, source, padding, device)
        start = time.perf_counter()
        net_output, lprobs = ctc_forward(model, source, padding, device)
        forward_s += time.perf_counter() - start
        compression = net_output.get("cif")  # CIF models: this batch's compression
        if compression is not None:
            cif_input_ms += float(compression.frames.sum()) * compression.frame_ms
            cif_outputs += int(compression.lengths.sum())
            cif_lambda = compression.lam
        out_mask = net_output["padding_mask"]
        frames = (~out_mask).sum(-1).tolist() if out_mask is not None else [lprobs.size(1)] * len(batch)
        start = time.perf_counter()
        exits = net_output["exit_layer"].tolist() if "exit_layer" in net_output else [None] * len(batch)
        rows = [lprobs[row, : frames[row]] for row in range(len(batch))]
        found = decoder.hypotheses(rows)
        for row, (i, (hyp, path)) in enumerate(zip(batch, found)):
            results[i] = Utterance(Path(manifest.entries[i][0]).stem, hyp, refs[i] if refs else None,
                                   lengths[i] / SAMPLE_RATE, exits[row], path_units(path, decoder.tgt_dict),
                                   rows[row].clone() if keep_emissions else None)
        decode_s += time.perf_counter() - start

    done = [u for u in results if u is not None]
    if len(done) != len(lengths):
        raise RuntimeError(f"transcribed {len(done)} of {len(lengths)} utterances of {manifest_path}")
    summary = Summary(len(lengths), len(done), sum(lengths) / SAMPLE_RATE, forward_s, decode_s,
                      parameters=parameter_count(model), dtype=getattr(model, "inference_dtype", "fp32"),
                      references=str(label_path(manifest_path, labels)), warmup_forwards=batching.warmup,
                      warmup_every_batch=batching.warm_every_batch)
    runner = getattr(model, "exit_runner", None)
    if runner is not None and runner.policy is not None:
        layers = [u.exit_layer for u in done]
        summary.exit_policy = str(runner.policy)
        summary.mean_exit_layer = sum(layers) / len(layers)
        summary.exit_histogram = dict(sorted(Counter(layers).items()))
    if cif_outputs:
        summary.cif_lambda = cif_lambda
        summary.frame_period_ms = cif_input_ms / cif_outputs
    if refs is not None:
        we, words, le, letters = word_error_counts(done)
        summary.wer, summary.uer, summary.word_errors, summary.words = we / max(words, 1), le / max(letters, 1), we, words
    return done, summary


def result_paths(results_dir: Path, checkpoint: Path, manifest_path: Path) -> Dict[str, Path]:
    """The files ``write_results`` writes, named as fairseq's ``examples/speech_recognition/infer.py``
    names its own (``hypo.word-<checkpoint file>-<subset>.txt``, ``ref.word-...``, ``hypo.units-...``,
    ``ref.units-...``), so sclite pipelines read them and a second subset or checkpoint gets files of
    its own; ``hypotheses-...tsv`` and ``summary-...json`` are this project's."""
    tag = f"{Path(checkpoint).name}-{Path(manifest_path).stem}"
    paths = {kind: results_dir / f"{kind}-{tag}.txt" for kind in ("hypo.word", "hypo.units", "ref.word", "ref.units")}
    return {**paths, "hypotheses": results_dir / f"hypotheses-{tag}.tsv", "summary": results_dir / f"summary-{tag}.json"}


def write_results(paths: Dict[str, Path], utterances: List[Utterance], summary: Summary) -> List[Path]:
    """Per-utterance results in manifest order at ``result_paths``: fairseq's four files (each line
    ``TEXT (None-ROW)``, as fairseq tags an utterance without speaker by its row; the ``ref`` files only
    with references), the TSV of hypotheses, references and errors, and the summary; the paths written."""
    def fairseq_lines(texts):
        return "".join(f"{text} (None-{row})\n" for row, text in enumerate(texts))

    files = {"hypo.word": fairseq_lines(" ".join(u.hyp) for u in utterances),
             "hypo.units": fairseq_lines(u.units for u in utterances)}
    if all(u.ref is not None for u in utterances):
        files["ref.word"] = fairseq_lines(" ".join(u.ref) for u in utterances)
        files["ref.units"] = fairseq_lines(to_letters(" ".join(u.ref)) for u in utterances)
    rows = ["id\thypothesis\treference\tword_errors\texit_layer\n"]
    for u in utterances:
        ref = " ".join(u.ref) if u.ref is not None else ""
        errors = editdistance.eval(u.hyp, u.ref) if u.ref is not None else ""
        exit_layer = u.exit_layer if u.exit_layer is not None else ""
        rows.append(f"{u.id}\t{' '.join(u.hyp)}\t{ref}\t{errors}\t{exit_layer}\n")
    files["hypotheses"] = "".join(rows)
    files["summary"] = json.dumps(asdict(summary), indent=2) + "\n"
    for kind, text in files.items():
        paths[kind].write_text(text, encoding="utf-8")
    return [paths[kind] for kind in files]
