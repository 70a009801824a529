"""Registered fairseq models. Importing this package registers all of them, and this plugin's
criteria and tasks (fairseq imports only the ``models`` and ``tasks`` folders of a user dir, and
neither when the package was imported before)."""

from .. import criterions, tasks  # noqa: F401
from . import original, sew, sew_ctc, sew_d, st_sew  # noqa: F401
from ..data.checkpoints import allow_fairseq_objects

allow_fairseq_objects()  # fairseq's own loads (resuming fine-tuning) stay weights-only
