"""``audio_pretraining_features``: the task name stored in checkpoints of the original SEW release.

Its config is fairseq's audio task config plus options for spectrogram inputs (``fbank_dim``,
``mfcc_dim`` and their frame sizes) and librosa loading. Those checkpoints set up this plugin's checked
tasks: pre-training without labels, fine-tuning with them; spectrogram inputs are refused by key.
"""

from dataclasses import dataclass

from fairseq.tasks import register_task
from fairseq.tasks.audio_finetuning import AudioFinetuningConfig

from ..config_rules import check_rules
from .audio import SewAudioFinetuningTask, SewAudioPretrainingTask


@dataclass
class ReleaseTaskConfig(AudioFinetuningConfig):
    load_with_librosa: bool = False
    fbank_dim: int = 0
    mfcc_dim: int = 0
    audio_feat_frame_length: float = 25.0
    audio_feat_frame_shift: float = 10.0


RELEASE_TASK_RULES = [
    ("fbank_dim", lambda v, c: v == 0, "0: filter-bank inputs are not supported"),
    ("mfcc_dim", lambda v, c: v == 0, "0: MFCC inputs are not supported"),
]


@register_task("audio_pretraining_features", dataclass=ReleaseTaskConfig)
class ReleaseAudioTask(SewAudioFinetuningTask):
    """Sets up ``sew_audio_finetuning`` when the config names labels, ``sew_audio_pretraining``
    otherwise (the release used one task for both)."""

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        check_rules(cfg, RELEASE_TASK_RULES, prefix="task.")
        return (SewAudioFinetuningTask if cfg.labels else SewAudioPretrainingTask)(cfg)
