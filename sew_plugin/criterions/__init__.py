"""Registered fairseq criteria (imported with ``sew_plugin.models``: fairseq imports only the
``models`` and ``tasks`` folders of a user dir)."""

from . import ctc_exits, sew_wav2vec  # noqa: F401
