"""Registered fairseq models. Importing this package registers all of them, and this plugin's
criteria (fairseq imports only the ``models`` and ``tasks`` folders of a user dir)."""

from .. import criterions  # noqa: F401
from . import sew, sew_ctc, sew_d, st_sew  # noqa: F401
