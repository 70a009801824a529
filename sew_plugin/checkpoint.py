"""Building models from fairseq checkpoints, and the resume check of ``fairseq-hydra-train``.

- ``load_checkpoint``: ``(model, cfg, task)`` of any checkpoint of this plugin, fairseq's wav2vec 2.0
  or the original SEW release, read safely (``sew_plugin.data.checkpoints``: whole files only, no
  code in a pickle).
- **Resuming.** ``ResumeCheck`` applies both checks to the checkpoint ``fairseq-hydra-train`` is about
  to resume from and names the newest whole checkpoint when it fails.
"""

import contextlib
import io
import warnings
from pathlib import Path
from typing import Optional

from hydra.experimental.callback import Callback

from .data.checkpoints import load_state, refusing_unsafe, verify_checkpoint
from .data.errors import DataError
from .modules.feature_extractor import group_feature_extractors
from .modules.masked_group_norm import mask_feature_norm


def load_checkpoint(path: Path, arg_overrides: Optional[dict] = None, quiet: bool = True):
    """``(model, cfg, task)`` of a checkpoint, loaded for inference: in eval mode on the CPU, with a
    GroupNorm front end's statistics taken over each utterance's own frames
    (``sew_plugin.modules.masked_group_norm``: a padded batch gives each utterance what it gives alone),
    and fairseq's feature extractor (wav2vec 2.0's) run the plugin's faster way
    (``feature_extractor.group_feature_extractors``: the same parameters and fp32 outputs).

    Registers this plugin's models first, so checkpoints of ``sew``, ``sew_ctc`` and their original
    release names resolve even when ``common.user_dir`` was another path on the training machine.
    """
    import sew_plugin.models  # noqa: F401
    from fairseq import checkpoint_utils

    path = verify_checkpoint(path)
    overrides = dict(arg_overrides or {})
    overrides.setdefault("user_dir", None)  # the training machine's path; this plugin is imported above
    # fairseq prints the whole model while building a fine-tuned encoder; keep stdout for results
    silence = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    with refusing_unsafe(path), silence, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        state = checkpoint_utils.load_checkpoint_to_cpu(str(path), overrides)
        upgrade_release_fine_tuning(state["cfg"])
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], overrides, state=state)
    model = models[0].eval()
    mask_feature_norm(model)
    group_feature_extractors(model)
    return model, cfg, task


def require_ctc(model, command: str, error=ValueError) -> None:
    """Refuse, as ``error``, a model without a CTC head: a pre-trained checkpoint's task has no target
    dictionary, so decoding or exporting its logits would fail deep inside (``command`` names who asks)."""
    from fairseq.models.wav2vec.wav2vec2_asr import Wav2VecCtc

    if not isinstance(model, Wav2VecCtc):
        raise error(f"{type(model).__name__} is not a CTC model: {command} takes fine-tuned sew_ctc or wav2vec_ctc "
                    "checkpoints")


def upgrade_release_fine_tuning(cfg) -> None:
    """The original SEW release fine-tuned with the fairseq of its day, whose ``audio_pretraining``
    task also read labels; fairseq 0.12 moved that to ``audio_finetuning``. Such a checkpoint's task
    becomes the release's ``audio_pretraining_features``, which sets up fine-tuning when it has labels."""
    task = cfg.get("task") if cfg is not None else None
    if task is not None and task.get("_name") == "audio_pretraining" and task.get("labels"):
        task["_name"] = "audio_pretraining_features"


def newest_whole_checkpoint(folder: Path, besides: Path) -> Optional[Path]:
    """The most recently written whole ``checkpoint*.pt`` in ``folder`` other than ``besides``."""
    for candidate in sorted(Path(folder).glob("checkpoint*.pt"), key=lambda p: p.stat().st_mtime, reverse=True):
        if candidate.resolve() != Path(besides).resolve():
            try:
                return verify_checkpoint(candidate)
            except DataError:
                continue
    return None


class ResumeCheck(Callback):
    """Hydra callback (the recipes' ``hydra.callbacks``): before ``fairseq-hydra-train`` starts, the
    checkpoint it would resume from must be whole and safe. fairseq copies ``checkpoint_last.pt``
    without an atomic rename, so a run killed during that copy leaves a truncated file that torch
    would fail on naming neither file nor cause; this names both, and the newest whole checkpoint."""

    def on_job_start(self, config, **kwargs) -> None:
        # Importing this module imported the package, and fairseq skips a user dir whose package is
        # already imported: register the models, criteria and tasks here instead.
        import sew_plugin.models  # noqa: F401

        ckpt = config.checkpoint
        suffix = ckpt.get("checkpoint_suffix") or ""
        if ckpt.restore_file == "checkpoint_last.pt":
            path = Path(ckpt.save_dir) / f"checkpoint_last{suffix}.pt"
        else:
            path = Path(ckpt.restore_file.replace(".pt", f"{suffix}.pt"))
        if not path.exists():
            return  # a first launch
        try:
            load_state(path, mmap=True)
        except DataError as e:
            whole = newest_whole_checkpoint(path.parent, path)
            hint = (f"the newest whole checkpoint is {whole}: resume from it with checkpoint.restore_file={whole}"
                    if whole else "no whole checkpoint is left beside it")
            # SystemExit: hydra turns a callback's exceptions into warnings and runs the job anyway
            raise SystemExit(f"fairseq-hydra-train: error: {path}: {e.message}; {hint}, "
                             f"or delete the file to start afresh")
