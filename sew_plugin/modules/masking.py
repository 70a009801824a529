"""wav2vec 2.0 span masks that follow NumPy's global seed.

fairseq 0.12.3's ``compute_mask_indices`` draws span positions from ``np.random.default_rng(seed)``,
which with no seed means fresh entropy from the operating system: no two runs mask alike, whatever
``common.seed`` says. Here the per-row seeds come from NumPy's global generator instead, so masks
follow ``np.random.seed`` (fairseq seeds it from ``common.seed``; the ``sew_wav2vec`` criterion's
``seed_per_batch`` seeds it per batch) while the span sampling itself stays fairseq's.

Every model of the plugin masks this way (``SeededMasks``), and the plugin's tasks make fairseq's own
wav2vec 2.0 do so too (``seed_masks``): the baseline of the papers' comparisons repeats under a seed
as the SEW models do.
"""

import numpy as np
import torch
from fairseq.data.data_utils import compute_mask_indices
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Model


def seeded_mask_indices(shape, padding_mask, mask_prob, mask_length, **kwargs) -> np.ndarray:
    """``compute_mask_indices(shape, padding_mask, mask_prob, mask_length, **kwargs)`` with its
    per-row generators seeded from ``np.random``."""
    seed = int(np.random.randint(1, 2**31 - 1))
    rows = torch.arange(shape[0])
    return compute_mask_indices(shape, padding_mask, mask_prob, mask_length,
                                seed=seed, epoch=1, indices=rows, **kwargs)


class SeededMasks:
    """For a subclass of fairseq's ``Wav2Vec2Model`` (listed before it): ``apply_mask`` with the time
    and channel positions drawn through ``seeded_mask_indices``."""

    def apply_mask(self, x, padding_mask, mask_indices=None, mask_channel_indices=None):
        """fairseq's time and channel masking of the (B, T, C) features, with seeded positions
        (fairseq's own ``mask_channel_before: true`` channel masks are left to fairseq)."""
        B, T, C = x.shape
        if self.mask_prob > 0 and mask_indices is None:
            mask_indices = torch.from_numpy(seeded_mask_indices(
                (B, T), padding_mask, self.mask_prob, self.mask_length, mask_type=self.mask_selection,
                mask_other=self.mask_other, min_masks=2, no_overlap=self.no_mask_overlap,
                min_space=self.mask_min_space, require_same_masks=self.cfg.require_same_masks,
                mask_dropout=self.cfg.mask_dropout)).to(x.device)
        if self.mask_channel_prob > 0 and not self.mask_channel_before and mask_channel_indices is None:
            mask_channel_indices = torch.from_numpy(seeded_mask_indices(
                (B, C), None, self.mask_channel_prob, self.mask_channel_length,
                mask_type=self.mask_channel_selection, mask_other=self.mask_channel_other,
                no_overlap=self.no_mask_channel_overlap, min_space=self.mask_channel_min_space,
            )).to(x.device).unsqueeze(1).expand(-1, T, -1)
        return super().apply_mask(x, padding_mask, mask_indices, mask_channel_indices)


class SeededWav2Vec2Model(SeededMasks, Wav2Vec2Model):
    """fairseq's wav2vec 2.0, its masks seeded (``seed_masks`` makes a built model one)."""


def seed_masks(model: torch.nn.Module) -> int:
    """Each fairseq ``Wav2Vec2Model`` in ``model`` (a pre-training model, or a CTC model's encoder)
    made a ``SeededWav2Vec2Model`` in place: the class changes, the parameters, their names and
    every forward but the mask positions stay. The number changed."""
    found = [m for m in model.modules() if type(m) is Wav2Vec2Model]
    for m in found:
        m.__class__ = SeededWav2Vec2Model
    return len(found)


def class_name(module: torch.nn.Module) -> str:
    """The name of ``module``'s class as fairseq or the plugin registered it, for reports and export
    metadata: fairseq's ``Wav2Vec2Model`` for one ``seed_masks`` changed."""
    return Wav2Vec2Model.__name__ if type(module) is SeededWav2Vec2Model else type(module).__name__
