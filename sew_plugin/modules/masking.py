"""wav2vec 2.0 span masks that follow NumPy's global seed.

fairseq 0.12.3's ``compute_mask_indices`` draws span positions from ``np.random.default_rng(seed)``,
which with no seed means fresh entropy from the operating system: no two runs mask alike, whatever
``common.seed`` says. Here the per-row seeds come from NumPy's global generator instead, so masks
follow ``np.random.seed`` (fairseq seeds it from ``common.seed``; the ``sew_wav2vec`` criterion's
``seed_per_batch`` seeds it per batch) while the span sampling itself stays fairseq's.
"""

import numpy as np
import torch
from fairseq.data.data_utils import compute_mask_indices


def seeded_mask_indices(shape, padding_mask, mask_prob, mask_length, **kwargs) -> np.ndarray:
    """``compute_mask_indices(shape, padding_mask, mask_prob, mask_length, **kwargs)`` with its
    per-row generators seeded from ``np.random``."""
    seed = int(np.random.randint(1, 2**31 - 1))
    rows = torch.arange(shape[0])
    return compute_mask_indices(shape, padding_mask, mask_prob, mask_length,
                                seed=seed, epoch=1, indices=rows, **kwargs)
