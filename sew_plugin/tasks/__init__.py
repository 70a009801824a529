"""Registered fairseq tasks: ``sew_audio_pretraining`` and ``sew_audio_finetuning``, fairseq's audio
tasks with their manifests, audio and labels checked before training (``sew_plugin.tasks.audio``),
and the original SEW release's ``audio_pretraining_features`` (``sew_plugin.tasks.original``).

fairseq imports this folder of a user dir by itself; ``import sew_plugin.models`` imports it too.
"""

from . import audio, original  # noqa: F401
