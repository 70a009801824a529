"""Registered fairseq models. Importing this package registers all of them."""

from . import sew  # noqa: F401
