"""Registered fairseq models. Importing this package registers all of them."""

from . import sew, sew_ctc, sew_d  # noqa: F401
