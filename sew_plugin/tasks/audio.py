"""fairseq's audio tasks with their input checked before training starts.

``sew_audio_pretraining`` and ``sew_audio_finetuning`` are fairseq's ``audio_pretraining`` and
``audio_finetuning`` (same config classes, same datasets, same checkpoints otherwise), except:

- ``load_dataset`` first validates the split's manifest: its first line is an existing audio root,
  every row is ``path<TAB>samples``, every file exists, has a readable header, is mono at
  ``task.sample_rate``, holds as many samples as its row says, is not a WAV cut short, and is at
  least the feature extractor's receptive field (400 samples) long. For fine-tuning the label file
  (``<split>.<task.labels>``) must have one non-empty line per manifest row, every symbol in the
  target dictionary (fairseq would silently map unknown symbols to ``<unk>``). Every bad row is
  reported at once, as ``DataErrors`` naming ``file:line``, before any model step. Utterances with
  more label symbols than the frames the built model's CTC head emits for them (input
  downsampling and ``ctc_frames_per_step`` change those) are counted and named: CTC cannot align
  them and ``criterion.zero_infinity`` zeroes their loss, so a split none of which can be aligned
  is refused (``ValueError``).
- the count of utterances loaded, of those left out because they are shorter than
  ``task.min_sample_size`` (fairseq drops them without a word), and of those cropped to
  ``task.max_sample_size`` is logged per split, with the key to change.
- each utterance read during training is checked as it is read: a file that cannot be decoded
  whole (a FLAC cut short) or holds NaN or infinite samples stops training with ``DataError``
  naming the manifest line and the file, instead of reaching the model.
- with ``task.segments`` (pre-training only; e.g. ``seg``), ``<split>.seg`` beside each manifest
  holds the unsupervised phone segments of its rows (format: ``sew_plugin.data.segments``), checked
  like the labels; each batch then carries their end frames, shifted by the crop, as
  ``net_input["cif_boundaries"]``, and a CIF model's alpha is guided by them instead of the rate
  loss. A model without CIF is refused when built.
- ``sew_audio_finetuning`` refuses, at its first update, a model whose parameters ask for their
  own learning rate (``model.encoder_lr_scale``) under an optimizer that would ignore it: only
  fairseq's ``composite`` with ``dynamic_groups`` reads the scale.
- absurd task keys (``sample_rate``, ``min_sample_size``, ``max_sample_size``, ``labels``,
  ``num_batch_buckets``, ``subsample``) are refused by key when the task is set up.

Only the header of each file is read before training (one ``soundfile.info`` per utterance); the
samples themselves are checked when training reads them. Binarized and multi-corpus datasets are
passed to fairseq unchecked (logged).
"""

import logging
import os
import time
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from fairseq.data import AddTargetDataset, FileAudioDataset
from fairseq.tasks import register_task
from fairseq.tasks.audio_finetuning import AudioFinetuningConfig, AudioFinetuningTask
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config
from fairseq.optim.composite import FairseqCompositeOptimizer
from fairseq.tasks.audio_pretraining import AudioPretrainingConfig, AudioPretrainingTask
from omegaconf import DictConfig, open_dict

from ..data.audio import MIN_SAMPLES, check_samples
from ..data.errors import DataError, DataErrors, read_lines
from ..data.manifest import Manifest, check_manifest, row_count_error
from ..data.segments import read_segments, to_frames
from ..modules.feature_extractor import ConvLayers, conv_layers_of, output_frames, parse_conv_layers, total_stride
from ..modules.masking import seed_masks

logger = logging.getLogger(__name__)

# wav2vec 2.0's conv stack, whose 20 ms frames the task counts until it has built a model (WFE-C has
# the same strides and receptive field); from then on it counts the built model's
DEFAULT_FRAME_LAYERS = parse_conv_layers(Wav2Vec2Config.conv_feature_layers)


def record_feature_layers(model_cfg, model) -> None:
    """Write the layer list the model built (WFE-C expanded from ``wfe_c_channels``) into the config
    fairseq-hydra-train saves in its checkpoints: fairseq builds the model from a merged copy, so
    the saved config kept wav2vec 2.0's default string beside WFE-C weights, and a reader without
    this plugin built the wrong front end. The plugin accepts either when it loads them."""
    built = getattr(getattr(model, "cfg", None), "conv_feature_layers", None)
    if built is not None and isinstance(model_cfg, DictConfig) and "conv_feature_layers" in model_cfg:
        with open_dict(model_cfg):
            model_cfg.conv_feature_layers = built


def extractor_layers(model) -> ConvLayers:
    """(channels, kernel, stride) of the feature extractor of a pre-training or CTC model."""
    encoder = model.w2v_encoder.w2v_model if hasattr(model, "w2v_encoder") else model
    return conv_layers_of(encoder.feature_extractor)


@dataclass
class SewAudioPretrainingConfig(AudioPretrainingConfig):
    segments: Optional[str] = field(
        default=None,
        metadata={"help": "extension of the segment files beside the manifests (<split>.<segments>: the segment "
                          "end times in seconds of each manifest row, sew_plugin/data/segments.py); a CIF model's "
                          "alpha is then guided by them (frame + boundary loss) instead of the rate loss"},
    )


def check_task_config(cfg, finetuning: bool) -> None:
    """Refuse absurd task keys by name (``ValueError``), before any data is read."""
    sample_rate = getattr(cfg, "sample_rate", 16000)
    if not isinstance(sample_rate, int) or sample_rate < 1:
        raise ValueError(f"task.sample_rate must be a positive number of samples per second, got {sample_rate!r}")
    low, high = getattr(cfg, "min_sample_size", None), getattr(cfg, "max_sample_size", None)
    if low is not None and low < 0:
        raise ValueError(f"task.min_sample_size must be >= 0 (or unset), got {low}")
    if high is not None and high < MIN_SAMPLES:
        raise ValueError(f"task.max_sample_size={high} is below the feature extractor's receptive field "
                         f"({MIN_SAMPLES} samples): every cropped utterance would give no frame")
    if low is not None and high is not None and high < low:
        raise ValueError(f"task.max_sample_size={high} is smaller than task.min_sample_size={low}")
    buckets = getattr(cfg, "num_batch_buckets", 0)
    if buckets is not None and buckets < 0:
        raise ValueError(f"task.num_batch_buckets must be >= 0, got {buckets}")
    subsample = getattr(cfg, "subsample", 1)
    if subsample is not None and not 0 < subsample <= 1:
        raise ValueError(f"task.subsample must be in (0, 1], got {subsample}")
    if finetuning and not getattr(cfg, "labels", None):
        raise ValueError("task.labels must name the label files' extension for fine-tuning, e.g. task.labels=ltr")


def ctc_needs(tokens: List[str]) -> int:
    """Frames CTC needs for ``tokens``: one each, plus a blank between repeated symbols."""
    return len(tokens) + sum(a == b for a, b in zip(tokens, tokens[1:]))


class CheckedFileAudioDataset(FileAudioDataset):
    """fairseq's ``FileAudioDataset`` whose items are checked as they are read: decoded whole and
    finite, else ``DataError`` naming the manifest line and the file. Long utterances are cropped
    from a seed of ``task.seed`` (``common.seed``), the epoch and the batch's ids, not from NumPy's
    global state: the same crops whichever worker or accumulation step collates a batch, and after
    a restart (README "Reproducible runs"). fairseq keeps loader workers (``dataset.num_workers`` > 0)
    alive across epochs with the dataset they started with, so there the epoch is the one they
    started in."""

    manifest_path: Path
    manifest_lines: List[int]
    crop_seed: int
    epoch: int = 1
    segments: Optional[List[np.ndarray]] = None  # per item, its segment ends (s) with task.segments
    frame_layers: ConvLayers = DEFAULT_FRAME_LAYERS  # the conv stack whose frames the segments are counted in

    def set_epoch(self, epoch):
        self.epoch = epoch
        super().set_epoch(epoch)

    def collater(self, samples):
        self._crops = np.random.default_rng([self.crop_seed, self.epoch, *(int(s["id"]) for s in samples)])
        self._crop_starts = []
        batch = super().collater(samples)
        if self.segments is not None and batch:
            batch["net_input"]["cif_boundaries"] = self.boundaries(samples, batch["net_input"])
        return batch

    def crop_to_max_size(self, t, target_size, dim=0):
        """fairseq's random crop, drawn from the batch's own generator: NumPy's global one is shared
        with the training thread, which reseeds it per batch while this runs in the loader's. The
        waveforms' crop starts are kept, in batch order, to shift their segments."""
        excess = t.size(dim) - target_size
        if excess <= 0:
            return t
        start = int(self._crops.integers(0, excess + 1))
        if dim == 0:
            self._crop_starts.append(start)
        return t.narrow(dim, start, target_size)

    def boundaries(self, samples, net_input) -> torch.Tensor:
        """(B, K) exclusive end frames at 20 ms of each utterance's segments within the samples the
        batch keeps of it (shifted by its crop; see ``to_frames``), padded with -1; K >= 1."""
        samples = [s for s in samples if s["source"] is not None]  # as fairseq's collater
        mask = net_input.get("padding_mask")
        kept = (~mask).sum(1) if mask is not None else torch.full((len(samples),), net_input["source"].size(1))
        starts = iter(self._crop_starts)  # one per cropped waveform (longer than what is kept), in order
        rows = []
        frame_seconds = total_stride(self.frame_layers) / self.sample_rate
        for s, n, frames in zip(samples, kept.tolist(), output_frames(kept, self.frame_layers).tolist()):
            start = next(starts) if s["source"].numel() > n else 0
            rows.append(to_frames(self.segments[s["id"]], start / self.sample_rate, n / self.sample_rate, frames,
                                  frame_seconds))
        out = torch.full((len(rows), max([1, *map(len, rows)])), -1, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.from_numpy(row)
        return out

    def __getitem__(self, index):
        fname = self.fnames[index]
        fname = self.text_compressor.decompress(fname if isinstance(self.fnames, list) else fname.as_py())
        audio = os.path.join(self.root_dir, fname)
        try:
            item = super().__getitem__(index)
        except Exception as err:
            raise DataError(self.manifest_path, f"{audio}: unreadable audio, truncated or corrupt ({err})",
                            self.manifest_lines[index]) from None
        try:
            check_samples(Path(audio), item["source"].numpy(), self.sizes[index])
        except DataError as err:  # name the manifest line too
            raise DataError(self.manifest_path, f"{audio}: {err.message}", self.manifest_lines[index]) from None
        return item


class CheckedAudioTaskMixin:
    """The checks shared by both tasks; see the module's docstring."""

    finetuning = False
    model_ctc_frames = None  # the ctc_frames of the model this task built (sew_ctc), once built
    model_frame_period_ms = None  # and its frame_period_ms
    frame_layers = DEFAULT_FRAME_LAYERS  # the conv stack of the model this task built, once built

    def _simple_layout(self, task_cfg) -> bool:
        return not (isinstance(task_cfg, Namespace) or getattr(task_cfg, "binarized_dataset", False)
                    or getattr(task_cfg, "multi_corpus_keys", None))

    def load_dataset(self, split: str, task_cfg=None, **kwargs):
        task_cfg = task_cfg or self.cfg
        segments_ext = getattr(task_cfg, "segments", None)
        if not self._simple_layout(task_cfg):
            if segments_ext:
                raise ValueError(f"task.segments={segments_ext} is read beside plain manifests only, not with "
                                 f"binarized or multi-corpus data")
            logger.warning(f"{split}: binarized or multi-corpus data are loaded by fairseq without sew's checks")
            return super().load_dataset(split, task_cfg, **kwargs)
        manifest_path = Path(self.cfg.data) / f"{split}.tsv"
        sample_rate = task_cfg.get("sample_rate", self.cfg.sample_rate)
        start = time.perf_counter()
        manifest, kept = self.check_split(manifest_path, sample_rate, task_cfg)
        segments = self.check_segments(manifest_path, manifest, sample_rate, segments_ext) if segments_ext else None
        logger.info(f"{split}: checked {manifest_path} and the headers of its {len(manifest.entries)} audio files "
                    f"in {time.perf_counter() - start:.1f} s")
        super().load_dataset(split, task_cfg, **kwargs)

        dataset = self.datasets[split]
        base = dataset.dataset if isinstance(dataset, AddTargetDataset) else dataset
        if type(base) is FileAudioDataset and len(base) == len(kept):
            base.__class__ = CheckedFileAudioDataset
            base.manifest_path = manifest_path
            base.manifest_lines = [manifest.line(i) for i in kept]
            base.crop_seed = task_cfg.get("seed", self.cfg.seed)
            base.frame_layers = self.frame_layers
            if segments is not None:
                base.segments = [segments[i] for i in kept]  # aligned with the rows fairseq kept
        elif segments is not None:
            raise ValueError(f"{split}: task.segments needs fairseq's FileAudioDataset of every manifest row kept, "
                             f"got {type(base).__name__} of {len(base)} items (unset task.subsample)")
        else:  # fairseq changed how it reads manifests: keep its dataset, say so
            logger.warning(f"{split}: {type(base).__name__} of {len(base)} items; samples are not checked as read")
        self.report_sizes(split, manifest, kept, task_cfg)

    def get_batch_iterator(self, dataset, *args, epoch=1, **kwargs):
        """fairseq's, with the dataset told its epoch before any batch is collated: a resumed run's
        iterator starts collating in the epoch it resumes, before fairseq calls ``set_epoch``."""
        dataset.set_epoch(epoch)
        return super().get_batch_iterator(dataset, *args, epoch=epoch, **kwargs)

    def check_split(self, manifest_path: Path, sample_rate: int, task_cfg) -> Tuple[Manifest, List[int]]:
        """Validate one split (see the module's docstring); return its manifest and the indices of
        the rows fairseq keeps (those not shorter than ``task.min_sample_size``)."""
        low = self.cfg.min_sample_size
        manifest, errors = check_manifest(manifest_path, sample_rate, left_out_below=low)  # fairseq leaves those out
        kept = [i for i, (_, n) in enumerate(manifest.entries) if low is None or n >= low]
        if self.finetuning and not errors:
            errors += self.check_labels(manifest_path, manifest, kept, sample_rate, task_cfg)
        if errors:
            errors.sort(key=lambda e: (str(e.path), e.line or 0))
            keys = ("task.data", "task.sample_rate") + (("task.labels",) if self.finetuning else ())
            raise DataErrors(f"rows in the {manifest_path.stem} split", errors,
                             f"fix them (sew manifest and sew labels write checked files), or check {', '.join(keys)}")
        if not kept:
            raise DataError(manifest_path, f"all {len(manifest.entries)} utterances are shorter than "
                            f"task.min_sample_size={low} samples: lower task.min_sample_size")
        return manifest, kept

    def check_segments(self, manifest_path: Path, manifest: Manifest, sample_rate: int, ext: str) -> List[np.ndarray]:
        """Every row's segment ends (seconds) from ``<split>.<ext>``; every bad line reported at once."""
        errors: List[DataError] = []
        segments = read_segments(Path(self.cfg.data) / f"{manifest_path.stem}.{ext}", manifest, sample_rate, errors)
        if errors:
            raise DataErrors(f"lines in the {manifest_path.stem} segment file", errors,
                             "segment end times in seconds, ascending, within each utterance (sew_plugin/data/segments.py)")
        return segments

    def check_labels(self, manifest_path: Path, manifest: Manifest, kept: List[int], sample_rate: int,
                     task_cfg) -> List[DataError]:
        label_path = Path(self.cfg.data) / f"{manifest_path.stem}.{task_cfg.labels}"
        lines = read_lines(label_path, "label file", fairseq_reads=True)
        mismatch = row_count_error(label_path, lines, manifest, "label")
        if mismatch:
            return [mismatch]
        symbols = self.target_dictionary.indices
        errors, checked = [], []  # checked: (row, CTC frames its labels need, samples read)
        high = self.cfg.max_sample_size
        for i in kept:
            tokens = lines[i].split()
            if not tokens:
                errors.append(DataError(label_path, f"empty label line for manifest line {manifest.line(i)}", i + 1))
                continue
            unknown = sorted({t for t in tokens if t not in symbols})
            if unknown:
                errors.append(DataError(label_path, f"symbols {unknown} are not in the target dictionary "
                                        f"dict.{task_cfg.labels}.txt", i + 1))
                continue
            samples = manifest.entries[i][1] if high is None else min(manifest.entries[i][1], high)
            checked.append((i, ctc_needs(tokens), samples))
        if checked and not errors:
            self.check_alignment(manifest_path.stem, label_path, *zip(*checked), sample_rate=sample_rate)
        return errors

    def check_alignment(self, split: str, label_path: Path, rows: Sequence[int], needs: Sequence[int],
                        samples: Sequence[int], sample_rate: int) -> None:
        """Find the utterances CTC cannot align: their labels need more frames (``ctc_needs``) than
        the CTC head emits for their samples, counted by the model ``build_model`` built (20 ms
        frames before one is built). ``criterion.zero_infinity`` zeroes their loss, so they train
        nothing without a word: warn, loudly when most of the split is lost, and refuse a split
        none of whose utterances can be aligned."""
        lengths = torch.tensor(samples)
        frames = self.model_ctc_frames(lengths) if self.model_ctc_frames else None
        if frames is not None:
            what = f"the model's CTC frames ({self.model_frame_period_ms():.0f} ms each)"
        else:
            frames = output_frames(lengths, self.frame_layers)
            what = f"{1000 * total_stride(self.frame_layers) / sample_rate:.0f} ms frames"
            if self.model_ctc_frames:
                what += " (an upper bound on what this CIF encoder emits: more utterances may be unalignable)"
        bad = [f"{label_path}:{i + 1}" for i, n, f in zip(rows, needs, frames.tolist()) if n > f]
        first = f"First: {', '.join(bad[:5])}"
        more_frames = "+model.ctc_frames_per_step=2 (CTC frames per encoder frame) or a smaller model.input_downsample_factor"
        if len(bad) == len(rows):
            raise ValueError(f"{split}: none of the {len(rows)} utterances can be aligned by CTC: each has more label "
                             f"symbols than {what}, so criterion.zero_infinity would zero every one of their losses "
                             f"and the model would learn nothing from them. Give the model more CTC frames with "
                             f"{more_frames}, or check that the label lines are in manifest order. {first}")
        counted = f"{len(bad)} of {len(rows)} utterances have more label symbols than {what}"
        if 2 * len(bad) > len(rows):
            logger.warning(f"{split}: MOST UTTERANCES CANNOT BE ALIGNED: {counted}, so CTC cannot align them and "
                           f"criterion.zero_infinity zeroes their loss: they train nothing. Give the model more CTC "
                           f"frames with {more_frames}. {first}")
        elif bad:
            logger.warning(f"{split}: {counted}, so CTC cannot align them (criterion.zero_infinity drops their "
                           f"loss); are the label lines in manifest order? {first}")

    def report_sizes(self, split: str, manifest: Manifest, kept: List[int], task_cfg) -> None:
        low, high = self.cfg.min_sample_size, self.cfg.max_sample_size
        total = len(manifest.entries)
        left_out = total - len(kept)
        cropped = sum(1 for i in kept if high is not None and manifest.entries[i][1] > high)
        logger.info(f"{split}: {len(kept)} of {total} utterances loaded from {manifest.path}")
        if left_out:
            logger.warning(f"{split}: {left_out} of {total} utterances left out: shorter than task.min_sample_size={low} "
                           f"samples (lower task.min_sample_size to keep them)")
        if cropped:
            if self.finetuning:
                logger.warning(f"{split}: {cropped} utterances longer than task.max_sample_size={high} samples are "
                               f"cropped to it while their transcripts are kept whole (raise or unset "
                               f"task.max_sample_size)")
            else:
                logger.info(f"{split}: {cropped} utterances longer than task.max_sample_size={high} samples are "
                            f"cropped to it at random (raise task.max_sample_size to keep them whole)")


def check_lr_scales(model, optimizer) -> None:
    """Refuse trainable parameters marked for their own learning rate (``optim_overrides``, as
    ``model.encoder_lr_scale`` marks the encoder's) unless fairseq's ``composite`` optimizer with
    ``dynamic_groups`` reads the marks: any other optimizer, or ``composite`` without them, would
    train every parameter at one rate without a word."""
    if not any(getattr(p, "optim_overrides", None) for p in model.parameters() if p.requires_grad):
        return
    while hasattr(optimizer, "fp32_optimizer") or hasattr(optimizer, "wrapped_optimizer"):  # fp16 / bf16 wrappers
        optimizer = getattr(optimizer, "fp32_optimizer", None) or optimizer.wrapped_optimizer
    if not (isinstance(optimizer, FairseqCompositeOptimizer) and optimizer.cfg.dynamic_groups):
        raise ValueError(
            f"model.encoder_lr_scale gives the encoder its own learning rate, but optimizer._name="
            f"{optimizer.cfg._name} (dynamic_groups={getattr(optimizer.cfg, 'dynamic_groups', None)}) would train "
            f"every parameter at one rate: use optimizer._name=composite with optimizer.dynamic_groups=true "
            f"(README.md: Fine-tuning recipes), or model.encoder_lr_scale=1")


@register_task("sew_audio_pretraining", dataclass=SewAudioPretrainingConfig)
class SewAudioPretrainingTask(CheckedAudioTaskMixin, AudioPretrainingTask):
    """fairseq's ``audio_pretraining`` with checked input and optional CIF segments (see the
    module's docstring)."""

    def __init__(self, cfg: SewAudioPretrainingConfig):
        check_task_config(cfg, finetuning=False)
        super().__init__(cfg)

    def build_model(self, model_cfg, from_checkpoint=False):
        """fairseq's, its masks seeded (``seed_masks``: fairseq's own wav2vec 2.0 drew them from OS
        entropy); with ``task.segments``, a model without CIF (which has no use for, and no forward
        argument for, ``cif_boundaries``) is refused by key."""
        model = super().build_model(model_cfg, from_checkpoint)
        seed_masks(model)
        record_feature_layers(model_cfg, model)
        self.frame_layers = extractor_layers(model)
        segments = getattr(self.cfg, "segments", None)
        if segments and getattr(model, "cif", None) is None:
            raise ValueError(f"task.segments={segments} guides CIF compression, but {type(model).__name__} has none: "
                             f"set model.compressor=cif (e.g. configs/pretraining/w2v2_base_cif.yaml) or unset "
                             f"task.segments")
        return model


@register_task("sew_audio_finetuning", dataclass=AudioFinetuningConfig)
class SewAudioFinetuningTask(CheckedAudioTaskMixin, AudioFinetuningTask):
    """fairseq's ``audio_finetuning`` with checked input and labels (see the module's docstring)."""

    finetuning = True

    def __init__(self, cfg: AudioFinetuningConfig):
        check_task_config(cfg, finetuning=True)
        super().__init__(cfg)
        self.optimizer_checked = False  # check_lr_scales runs at the first update

    def build_model(self, model_cfg, from_checkpoint=False):
        """fairseq's, its masks seeded (``seed_masks``); splits loaded from now on (fairseq-hydra-train
        loads them all after building the model) count their labels against the CTC frames this model
        emits (``SEWCtc.ctc_frames``: input downsampling and ``ctc_frames_per_step`` change them), not
        20 ms frames."""
        model = super().build_model(model_cfg, from_checkpoint)
        seed_masks(model)
        self.frame_layers = extractor_layers(model)
        self.model_ctc_frames = getattr(model, "ctc_frames", None)
        self.model_frame_period_ms = getattr(model, "frame_period_ms", None)
        return model

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        """fairseq's, after refusing (once) an optimizer that ignores a parameter's own lr scale."""
        if not self.optimizer_checked:
            check_lr_scales(model, optimizer)
            self.optimizer_checked = True
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def load_target_dictionary(self):
        """fairseq's, with a missing, non-UTF-8 or malformed dictionary refused by name."""
        if self.cfg.labels:
            folder = self.cfg.target_dictionary or self.cfg.data
            dict_path = Path(folder) / f"dict.{self.cfg.labels}.txt"
            read_lines(dict_path, "dictionary", fairseq_reads=True)
            try:
                return super().load_target_dictionary()
            except (ValueError, RuntimeError) as err:
                raise DataError(dict_path, f"not a fairseq dictionary ({err})") from None
        return None
