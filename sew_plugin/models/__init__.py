"""Registered fairseq models. Importing this package registers all of them."""

from . import sew, sew_ctc, sew_d, st_sew  # noqa: F401
