"""sew_plugin: efficient speech self-supervised models (SEW, SEW-D, St-SEW) as a fairseq user-dir.

Point fairseq at the package with ``common.user_dir=$(sew user-dir)``; fairseq then imports
``sew_plugin.models`` and ``sew_plugin.tasks`` and registers everything. From Python,
``import sew_plugin.models`` does the same. The package root stays free of fairseq imports so that
the ``sew`` command line starts quickly.
"""

import os

__version__ = "0.1.0"

USER_DIR = os.path.dirname(os.path.abspath(__file__))
